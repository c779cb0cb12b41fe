"""Pooling token mixer: PoolFormer (Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022)."""
from __future__ import annotations

from torch import Tensor, nn

from metablocks.fields import Kernel
from metablocks.registry import Component, Context, register


class PoolingConfig(Component):
    layout = "channels_first"
    pool_size: Kernel = 3

    def check(self, ctx: Context) -> list[str]:
        return [] if self.pool_size % 2 else [f"pool_size must be odd to keep the map size, got {self.pool_size}"]


@register("token_mixer", "pooling", config=PoolingConfig)
class Pooling(nn.Module):
    """avgpool(x) - x with a stride-1 window that ignores padding (PoolFormer, Yu et al. 2022)."""

    def __init__(self, dim: int, *, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.pool(x) - x
