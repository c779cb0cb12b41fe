"""Learned absolute position embedding (ViT, Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), resized
to other map sizes as timm's ``resample_abs_pos_embed`` (``dynamic_img_size``): bicubic, antialiased."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.registry import Component, Context, register
from metablocks.tracing import fx_tracing


class LearnedPosEmbedConfig(Component):
    # one position per prefix token too (ViT, DeiT: added after they are put in); false: the map's tokens only
    # (ConViT, DeiT III's ``no_embed_class``)
    prefix: bool = True
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"  # to other map sizes than the built one
    antialias: bool = True

    def check(self, ctx: Context) -> list[str]:
        if ctx.resolution is None:
            return ["a learned position embedding is built for its map's size: give the input size (img_size)"]
        return []

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None
        return LearnedPosEmbed(ctx.dim, grid=ctx.resolution, prefix=len(ctx.prefix), covers_prefix=self.prefix,
                               interpolation=self.interpolation, antialias=self.antialias,
                               tokens=ctx.layout == "tokens")


@register("pos_embed", "learned", config=LearnedPosEmbedConfig)
class LearnedPosEmbed(nn.Module):
    """x + E, E a learned (1, P' + H*W, C) table (P' = the prefix tokens it covers); another map size resizes the
    map part of E (Dosovitskiy et al. 2021)."""

    traced_at_built_size = True  # torch.fx (sizes are proxies) bakes the table of the built size

    def __init__(self, dim: int, *, grid: tuple[int, int], prefix: int = 0, covers_prefix: bool = True,
                 interpolation: str = "bicubic", antialias: bool = True, tokens: bool = True) -> None:
        super().__init__()
        self.grid, self.prefix, self.tokens = tuple(grid), prefix, tokens
        self.covered = prefix if covers_prefix else 0
        self.interpolation, self.antialias = interpolation, antialias
        self.weight = nn.Parameter(torch.empty(1, self.covered + grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def resized(self, hw: tuple[int, int]) -> Tensor:
        """The table for an ``hw`` map (the built one as it is)."""
        if (not torch.jit.is_scripting() and fx_tracing()) or (hw[0] == self.grid[0] and hw[1] == self.grid[1]):
            return self.weight
        head, grid = self.weight[:, : self.covered], self.weight[:, self.covered:]
        grid = grid.float().reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode=self.interpolation, antialias=self.antialias and
                             self.interpolation != "nearest")
        grid = grid.permute(0, 2, 3, 1).reshape(1, hw[0] * hw[1], -1).to(self.weight.dtype)
        return torch.cat([head, grid], dim=1)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        pos = self.resized(hw)
        if not self.tokens:  # a (B, C, H, W) map
            return x + pos.transpose(1, 2).reshape(1, -1, hw[0], hw[1])
        if self.covered == self.prefix:  # (B, P + H*W, C)
            return x + pos
        return torch.cat([x[:, : self.prefix], x[:, self.prefix:] + pos], dim=1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, prefix={self.covered}"
