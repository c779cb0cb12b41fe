"""Projection shortcut: a 1x1 conv (+ norm) matching a transition block's width and stride (He et al., "Deep Residual
Learning for Image Recognition", CVPR 2016); ``pool: avg`` averages first and convolves unstrided (ResNet-D, He et
al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019; MOAT)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Literal

from torch import nn

from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class ProjectionConfig(Component):
    layout = "channels_first"
    changes_width = True  # built with the block's in -> out width and stride
    norm: Annotated[Component, Ref("norm")] | None = "batchnorm"
    pool: Literal["none", "avg"] = "none"  # avg: AvgPool(stride, ceil_mode) then an unstrided 1x1 conv
    bias: bool = False

    def nested(self, ctx: Context) -> list[tuple[tuple[object, ...], Component, Context]]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return [(("norm",), self.norm, Context(out))] if self.norm is not None else []

    def build(self, ctx: Context) -> nn.Module:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        conv_stride = ctx.stride
        if self.pool == "avg" and ctx.stride > 1:
            parts["pool"] = nn.AvgPool2d(ctx.stride, ctx.stride, ceil_mode=True, count_include_pad=False)
            conv_stride = 1
        parts["conv"] = nn.Conv2d(ctx.dim, out, 1, stride=conv_stride, bias=self.bias)
        if self.norm is not None:
            parts["norm"] = build_at(self.norm, out, "channels_first")
        return self.module(parts)


@register("shortcut", "projection", config=ProjectionConfig)
class Projection(nn.Sequential):
    """[avg pool ->] 1x1 conv [-> norm]: the shortcut of a block that changes width or stride (He et al. 2016, 2019)."""
