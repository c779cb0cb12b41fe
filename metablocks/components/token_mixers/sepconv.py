"""Separable convolution token mixer: ConvFormer (Yu et al., "MetaFormer Baselines for Vision", 2022)."""
from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from metablocks.fields import Kernel, Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class SepConvConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 7
    expansion_ratio: Ratio = 2.0
    act: Annotated[Component, Ref("act")] = "star_relu"
    act2: Annotated[Component, Ref("act")] = "identity"
    bias: bool = False

    def check(self, ctx: Context) -> list[str]:
        errors = width_problems(self.expansion_ratio, ctx.dim, "expansion_ratio")
        return errors + ([] if self.kernel_size % 2 else [f"kernel_size must be odd to keep the map size, got {self.kernel_size}"])


@register("token_mixer", "sepconv", config=SepConvConfig)
class SepConv(nn.Module):
    """Inverted separable conv: pointwise expand -> act -> depthwise kxk -> act2 -> pointwise (ConvFormer, Yu et al. 2022)."""

    def __init__(self, dim: int, *, kernel_size: int = 7, expansion_ratio: float = 2.0, act: Component,
                 act2: Component, bias: bool = False) -> None:
        super().__init__()
        hidden = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.act1 = act.build()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=bias)
        self.act2 = act2.build()
        self.pwconv2 = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.pwconv2(self.act2(self.dwconv(self.act1(self.pwconv1(x)))))
