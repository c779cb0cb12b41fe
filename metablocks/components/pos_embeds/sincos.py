"""Fixed 2-D sine-cosine position embedding (Vaswani et al. 2017 in 2-D; MoCo v3, Chen et al. 2021; timm's
``build_sincos2d_pos_embed``): computed for any map size, nothing learned; prefix tokens get none."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from metablocks.registry import Component, Context, register


class SinCosPosEmbedConfig(Component):
    temperature: Annotated[float, Field(gt=1.0, le=1e9, allow_inf_nan=False)] = 10000.0

    def check(self, ctx: Context) -> list[str]:
        if ctx.dim % 4:
            return [f"a 2-D sin-cos position embedding takes a width divisible by 4 (sin and cos of y and x); "
                    f"dim={ctx.dim}"]
        return []

    def build(self, ctx: Context) -> nn.Module:
        return SinCosPosEmbed(ctx.dim, prefix=len(ctx.prefix), temperature=self.temperature,
                              tokens=ctx.layout == "tokens")


def sincos_2d(hw: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """(H*W, dim): [sin(y w), sin(x w), cos(y w), cos(x w)], w_k = temperature^(-k / (dim / 4)), rows in raster order."""
    bands = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(hw[0], dtype=torch.float32), torch.arange(hw[1], dtype=torch.float32),
                            indexing="ij")
    angles = torch.stack([ys.flatten(), xs.flatten()], dim=1)[:, :, None] * bands  # (N, 2, dim / 4)
    return torch.stack([angles.sin(), angles.cos()], dim=1).flatten(1)  # (N, 2 * 2 * dim / 4)


@register("pos_embed", "sincos", config=SinCosPosEmbedConfig)
class SinCosPosEmbed(nn.Module):
    """x + fixed 2-D sin-cos positions of the map tokens (computed per map size)."""

    def __init__(self, dim: int, *, prefix: int = 0, temperature: float = 10000.0, tokens: bool = True) -> None:
        super().__init__()
        self.dim, self.prefix, self.temperature, self.tokens = dim, prefix, temperature, tokens

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        pos = sincos_2d(hw, self.dim, self.temperature).to(device=x.device, dtype=x.dtype)
        if not self.tokens:
            return x + pos.t().reshape(1, self.dim, hw[0], hw[1])
        return torch.cat([x[:, : self.prefix], x[:, self.prefix:] + pos], dim=1) if self.prefix else x + pos

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
