"""Depthwise-separable shortcut: a depthwise kxk stride-s conv + norm, then a 1x1 conv + norm, matching a transition
block's width and stride (GhostNet's shortcut, Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020;
GhostNetV2, Tang et al., NeurIPS 2022). Names: ``conv_dw``/``bn_dw`` then ``conv``/``bn`` (timm's ``shortcut.0``..``3``).
"""
from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from metablocks.fields import Kernel
from metablocks.registry import Component, Context, Ref, register


class DwProjectConfig(Component):
    layout = "channels_first"
    changes_width = True  # built with the block's in -> out width and stride
    kernel_size: Kernel = 3  # of the depthwise conv (GhostNet: the block's depthwise kernel)
    norm: Annotated[Component, Ref("norm")] = "batchnorm"

    def nested(self, ctx: Context) -> list[tuple[tuple[object, ...], Component, Context]]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return [(("norm",), self.norm, Context(width)) for width in dict.fromkeys([ctx.dim, out])]

    def check(self, ctx: Context) -> list[str]:
        return [] if self.kernel_size % 2 else [f"kernel_size={self.kernel_size} must be odd to keep the map centred"]

    def build(self, ctx: Context) -> nn.Module:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return self.module(ctx.dim, out, stride=ctx.stride, kernel_size=self.kernel_size, norm=self.norm)


@register("shortcut", "dw_project", config=DwProjectConfig)
class DwProject(nn.Module):
    """bn(conv1x1(bn(dwconv_kxk stride s(x)))): GhostNet's shortcut where a block changes width or stride."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, kernel_size: int = 3, norm: Component) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_dim, in_dim, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                                 groups=in_dim, bias=False)
        self.bn_dw = norm.build(Context(in_dim))
        self.conv = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.bn = norm.build(Context(out_dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))
        return self.bn(self.conv(self.bn_dw(self.conv_dw(x))))
