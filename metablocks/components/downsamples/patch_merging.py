"""Patch merging downsample: each 2x2 neighbourhood concatenated, normalized and projected (Liu et al., "Swin
Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021)."""
from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register
from metablocks.tracing import fx_tracing


class PatchMergingConfig(Component):
    layout = "channels_first"  # takes and returns (B, C, H, W) like every downsample; works channels-last inside
    norm: Annotated[Component, Ref("norm")] | None = "layernorm"
    bias: bool = False

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return tuple((r + 1) // 2 for r in resolution)  # type: ignore[return-value]  # odd sizes are zero-padded

    def check(self, ctx: Context) -> list[str]:
        if ctx.resolution and min(ctx.resolution) < 2:
            return [f"a {ctx.resolution[0]}x{ctx.resolution[1]} map is too small to merge 2x2 patches"]
        return []

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        res = self.out_resolution(ctx.resolution) if ctx.resolution else None
        return [(("norm",), self.norm, Context(4 * ctx.dim, resolution=res, layout="channels_last"))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a downsample needs the stage's dim"
        norm = build_at(self.norm, 4 * ctx.dim, "channels_last") if self.norm else None  # on the (B, H/2, W/2, 4C) map
        return PatchMerging(ctx.dim, ctx.out_dim, norm=norm, bias=self.bias)


@register("downsample", "patch_merging", config=PatchMergingConfig)
class PatchMerging(nn.Module):
    """(B, C, H, W) -> concat of each 2x2 neighbourhood (B, H/2, W/2, 4C) -> norm -> linear -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_dim: int, out_dim: int, *, norm: nn.Module | None = None, bias: bool = False) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.reduction = nn.Linear(4 * in_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        height, width = x.shape[-2], x.shape[-1]
        if (not torch.jit.is_scripting() and fx_tracing()) or height % 2 == 1 or width % 2 == 1:
            x = F.pad(x, (0, width % 2, 0, height % 2))  # traced: always (a no-op pad at even sizes)
        # the 4C channels in Swin's order: (0,0), (1,0), (0,1), (1,1) as (row, column) offsets; permute/reshape as
        # einops' "b c (h dh) (w dw) -> b h w (dw dh c)" (TorchScript and torch.fx take these)
        x = x.unflatten(2, (-1, 2)).unflatten(4, (-1, 2)).permute(0, 2, 4, 5, 3, 1).flatten(3)  # (B, H/2, W/2, 4C)
        x = self.reduction(self.norm(x))  # (B, H/2, W/2, C_out)
        return x.permute(0, 3, 1, 2)  # a view: the next block permutes it back for free
