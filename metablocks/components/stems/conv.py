"""Stems (kind ``stem``): image (B, 3, H, W) -> first feature map (B, dim, H/s, W/s)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.common.conv_arith import conv_out
from metablocks.fields import Kernel, Padding, Stride
from metablocks.registry import Component, Context, Ref, register


class ConvStemConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 7
    stride: Stride = 4
    padding: Padding = 2
    bias: bool = True
    norm: Annotated[Component, Ref("norm")] | None = None

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.kernel_size, self.stride, self.padding)

    def check(self, ctx: Context) -> list[str]:
        if ctx.resolution and min(self.out_resolution(ctx.resolution)) < 1:
            return [f"input {ctx.resolution[0]}x{ctx.resolution[1]} is too small for a {self.kernel_size}x{self.kernel_size} "
                    f"stride-{self.stride} stem"]
        return []

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        res = self.out_resolution(ctx.resolution) if ctx.resolution else None
        return [(("norm",), self.norm, Context(out, resolution=res))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a stem needs the first stage's dim"
        norm = self.norm.build(Context(ctx.out_dim, layout="channels_first")) if self.norm else None
        return ConvStem(ctx.dim, ctx.out_dim, kernel_size=self.kernel_size, stride=self.stride,
                        padding=self.padding, bias=self.bias, norm=norm)


@register("stem", "conv", config=ConvStemConfig)
class ConvStem(nn.Module):
    """Strided convolution patch embedding, optionally normalized (e.g. MetaFormer's 7x7 stride-4 stem, ViT's 16x16 patchify)."""

    def __init__(self, in_chans: int, dim: int, *, kernel_size: int, stride: int, padding: int, bias: bool = True,
                 norm: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=padding, bias=bias)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))
