"""Downsamplers (kind ``downsample``): between stages, (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.common.conv_arith import conv_out
from metablocks.fields import Kernel, Padding, Stride
from metablocks.registry import Component, Context, Ref, register


class ConvDownsampleConfig(Component):
    layout = "channels_first"
    omit_when_default = frozenset({"post_norm"})  # added later: recipes without it keep their model_id
    kernel_size: Kernel = 3
    stride: Stride = 2
    padding: Padding = 1
    bias: bool = True
    norm: Annotated[Component, Ref("norm")] | None = None
    norm_first: bool = True  # normalize the input (MetaFormer) rather than the output
    post_norm: Annotated[Component, Ref("norm")] | None = None  # a second norm on the output (with norm_first: both)

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.kernel_size, self.stride, self.padding)

    def check(self, ctx: Context) -> list[str]:
        if ctx.resolution and min(self.out_resolution(ctx.resolution)) < 1:
            return [f"a {ctx.resolution[0]}x{ctx.resolution[1]} map is too small for a {self.kernel_size}x{self.kernel_size} "
                    f"stride-{self.stride} downsample"]
        return []

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        out = Context(ctx.out_dim or ctx.dim, resolution=self.out_resolution(ctx.resolution) if ctx.resolution else None)
        found = []
        if self.norm is not None:
            found.append((("norm",), self.norm, Context(ctx.dim, resolution=ctx.resolution) if self.norm_first else out))
        if self.post_norm is not None:
            found.append((("post_norm",), self.post_norm, out))
        return found

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a downsample needs the stage's dim"
        norm_dim = ctx.dim if self.norm_first else ctx.out_dim
        norm = self.norm.build(Context(norm_dim, layout="channels_first")) if self.norm else None
        post_norm = self.post_norm.build(Context(ctx.out_dim, layout="channels_first")) if self.post_norm else None
        return ConvDownsample(ctx.dim, ctx.out_dim, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                              bias=self.bias, norm=norm, norm_first=self.norm_first, post_norm=post_norm)


@register("downsample", "conv", config=ConvDownsampleConfig)
class ConvDownsample(nn.Module):
    """Strided convolution between stages, with an optional norm before or after it, or both (MetaFormer, Yu et al.
    2022; a norm on each side: e.g. Next-ViT's and MOAT's patch embeddings)."""

    def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int, stride: int, padding: int, bias: bool = True,
                 norm: nn.Module | None = None, norm_first: bool = True, post_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = norm if norm is not None else nn.Identity()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=padding, bias=bias)
        self.post_norm = post_norm if post_norm is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.norm(x)) if self.norm_first else self.norm(self.conv(x))
        return self.post_norm(x)
