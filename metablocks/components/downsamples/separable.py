"""Depthwise-separable downsample: a strided depthwise conv-BN at the input width, then a 1x1 conv-BN to the new
width (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", 2017; the
transition of LSNet, Wang et al., "LSNet: See Large, Focus Small", CVPR 2025)."""
from __future__ import annotations

from torch import Tensor, nn

from metablocks.components.common.conv_arith import conv_out, too_small
from metablocks.components.common.reparam import ConvBN
from metablocks.fields import Kernel, Stride
from metablocks.registry import Component, Context, register


class SeparableDownsampleConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 3
    stride: Stride = 2

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.kernel_size, self.stride, self.kernel_size // 2)

    def check(self, ctx: Context) -> list[str]:
        errors = [] if self.kernel_size % 2 else [f"kernel_size must be odd, got {self.kernel_size}"]
        out = self.out_resolution(ctx.resolution) if ctx.resolution else None
        return errors + too_small(ctx.resolution, out, f"stride-{self.stride} {self.kernel_size}x{self.kernel_size} downsample")

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a downsample needs the stage's dim"
        return SeparableDownsample(ctx.dim, ctx.out_dim, kernel_size=self.kernel_size, stride=self.stride)


@register("downsample", "separable", config=SeparableDownsampleConfig)
class SeparableDownsample(nn.Module):
    """pw(dw(x)): dw a k x k stride-s depthwise conv-BN (C_in channels), pw a 1x1 conv-BN C_in -> C_out (MobileNets,
    Howard et al. 2017); ``metablocks.deploy`` folds both BNs."""

    def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.dw = ConvBN(in_dim, in_dim, kernel_size, stride=stride, groups=in_dim)
        self.pw = ConvBN(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H / s, W / s)
        return self.pw(self.dw(x))
