"""Downsamplers (kind ``downsample``): between stages, (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.conv_arith import conv_out
from metablocks.fields import Kernel, Padding, Stride
from metablocks.registry import Component, Context, Ref, register


class ConvDownsampleConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 3
    stride: Stride = 2
    padding: Padding = 1
    bias: bool = True
    norm: Annotated[Component, Ref("norm")] | None = None
    norm_first: bool = True  # normalize the input (MetaFormer) rather than the output

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.kernel_size, self.stride, self.padding)

    def check(self, ctx: Context) -> list[str]:
        if ctx.resolution and min(self.out_resolution(ctx.resolution)) < 1:
            return [f"a {ctx.resolution[0]}x{ctx.resolution[1]} map is too small for a {self.kernel_size}x{self.kernel_size} "
                    f"stride-{self.stride} downsample"]
        return []

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        if self.norm is None:
            return []
        if self.norm_first:
            return [(("norm",), self.norm, Context(ctx.dim, resolution=ctx.resolution))]
        res = self.out_resolution(ctx.resolution) if ctx.resolution else None
        return [(("norm",), self.norm, Context(ctx.out_dim or ctx.dim, resolution=res))]

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a downsample needs the stage's dim"
        norm_dim = ctx.dim if self.norm_first else ctx.out_dim
        norm = self.norm.build(Context(norm_dim, layout="channels_first")) if self.norm else None
        return ConvDownsample(ctx.dim, ctx.out_dim, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                              bias=self.bias, norm=norm, norm_first=self.norm_first)


@register("downsample", "conv", config=ConvDownsampleConfig)
class ConvDownsample(nn.Module):
    """Strided convolution between stages, with an optional norm before or after (MetaFormer, Yu et al. 2022)."""

    def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int, stride: int, padding: int, bias: bool = True,
                 norm: nn.Module | None = None, norm_first: bool = True) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = norm if norm is not None else nn.Identity()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x)) if self.norm_first else self.norm(self.conv(x))
