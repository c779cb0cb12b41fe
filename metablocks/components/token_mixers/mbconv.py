"""MBConv, the inverted bottleneck: 1x1 expand -> norm -> act -> depthwise kxk (stride) -> norm -> act -> optional
squeeze-excite -> 1x1 shrink (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018; in
the pre-norm form of CoAtNet, Dai et al. 2021, and MOAT, Yang et al., "MOAT: Alternating Mobile Convolution and
Attention Brings Strong Vision Models", ICLR 2023).

The pre-norm and the shortcut are the block's: MOAT's MBConv block is ``x = shortcut(x) + mbconv(batchnorm(x))``.
In the first block of a stage the module is built with ``in_dim`` and ``stride`` (the stride sits on the depthwise
conv). The hidden width is ``expansion`` times the block's *output* width, and the squeeze-excite bottleneck is
``se_ratio`` times it too, as in the official deeplab2 code (model/layers/moat_blocks.py). Attribute names follow it:
expand_conv/expand_norm, depthwise_conv/depthwise_norm, se.reduce/se.expand, shrink_conv.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.same_padding import PaddingMode, conv2d
from metablocks.fields import Kernel, Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class MBConvConfig(Component):
    layout = "any"  # channels-first, or channels-last (pointwise convs as matmuls: PyTorch's CPU 1x1 conv is slow)
    expansion: Ratio = 4.0  # hidden width = int(expansion * dim), dim being the block's output width
    kernel_size: Kernel = 3  # of the depthwise conv
    se_ratio: Ratio | None = 0.25  # squeeze-excite bottleneck = max(1, int(se_ratio * dim)); None: no SE (MOAT blocks)
    se_act: Annotated[Component, Ref("act")] = "silu"  # inside the SE (the official code's default: swish)
    norm: Annotated[Component, Ref("norm")] = "batchnorm"  # after the expansion and after the depthwise conv
    act: Annotated[Component, Ref("act")] = "gelu"
    padding: PaddingMode = "symmetric"  # "same": TensorFlow's, as MOAT's official code (stride-2 convs pad 0/1)

    def hidden(self, dim: int) -> int:
        return int(self.expansion * dim)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        hidden = max(self.hidden(ctx.dim), 1)
        return [(("norm",), self.norm, Context(hidden, resolution=ctx.resolution)), (("act",), self.act, Context(hidden)),
                *([(("se_act",), self.se_act, Context(self.se_width(ctx.dim)))] if self.se_ratio is not None else [])]

    def se_width(self, dim: int) -> int:
        return max(1, int(self.se_ratio * dim)) if self.se_ratio is not None else 0

    def check(self, ctx: Context) -> list[str]:
        errors = width_problems(self.expansion, ctx.dim, "expansion")
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map centred, got {self.kernel_size}")
        return errors


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, channels_last: bool) -> Tensor:
    """A 1x1 conv with ``weight`` (out, in, 1, 1); channels-last as a matmul over the last axis (the same weights)."""
    return F.linear(x, weight.flatten(1), bias) if channels_last else F.conv2d(x, weight, bias)


def _norm(norm: Component, dim: int, channels_last: bool) -> tuple[nn.Module, list[int], list[int]]:
    """The norm built for the map's layout, with the permutes of the view it runs on (none when it takes the map's
    layout; BatchNorm on a channels-last map sees a permuted (B, C, H, W) view); its state_dict is the same either way."""
    own = type(norm).layout
    layout = ("channels_last" if channels_last else "channels_first") if own == "any" else own
    built = norm.build(Context(dim, layout=layout))
    if layout == ("channels_last" if channels_last else "channels_first"):
        return built, [], []
    return (built, [0, 3, 1, 2], [0, 2, 3, 1]) if channels_last else (built, [0, 2, 3, 1], [0, 3, 1, 2])


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(act(reduce(mean_HW x)))), biased 1x1 convs (Hu et al., "Squeeze-and-Excitation Networks", 2018)."""

    def __init__(self, dim: int, hidden: int, *, act: Component, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.act = act.build()
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) or (B, H, W, C)
        pooled = x.mean([1, 2] if self.channels_last else [2, 3], keepdim=True)
        hidden = self.act(pointwise(pooled, self.reduce.weight, self.reduce.bias, self.channels_last))
        return x * torch.sigmoid(pointwise(hidden, self.expand.weight, self.expand.bias, self.channels_last))


@register("token_mixer", "mbconv", config=MBConvConfig)
class MBConv(nn.Module):
    """1x1 expand-norm-act, depthwise kxk (stride)-norm-act, SE, 1x1 shrink: the inverted bottleneck (Sandler et al. 2018).

    Channels-first or channels-last, with the same parameters (1x1 convs kept as Conv2d weights)."""

    def __init__(self, dim: int, *, in_dim: int | None = None, stride: int = 1, expansion: float = 4.0,
                 kernel_size: int = 3, se_ratio: float | None = 0.25, se_act: Component, norm: Component,
                 act: Component, padding: PaddingMode = "symmetric", channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        hidden = int(expansion * dim)
        self.expand_conv = nn.Conv2d(in_dim or dim, hidden, 1, bias=False)
        self.expand_norm, self._norm_in, self._norm_out = _norm(norm, hidden, channels_last)
        self.act1 = act.build()
        self.depthwise_conv = conv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden, bias=False,
                                     padding=padding)
        self.depthwise_norm, _, _ = _norm(norm, hidden, channels_last)
        self.act2 = act.build()
        self.se = (SqueezeExcite(hidden, max(1, int(se_ratio * dim)), act=se_act, channels_last=channels_last)
                   if se_ratio is not None else nn.Identity())
        self.shrink_conv = nn.Conv2d(hidden, dim, 1)

    def _norm_view(self, x: Tensor, first: bool) -> Tensor:
        """A norm on ``x``, through a permuted view where it works in the other layout."""
        if self._norm_in:
            x = x.permute(self._norm_in)
        x = self.expand_norm(x) if first else self.depthwise_norm(x)
        return x.permute(self._norm_out) if self._norm_out else x

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, ceil(H/s), ceil(W/s)), or channels last
        x = pointwise(x, self.expand_conv.weight, None, self.channels_last)
        x = self.act1(self._norm_view(x, True))
        if self.channels_last:  # the depthwise conv on a (B, C, H, W) view in channels_last memory format: no copy
            x = self.depthwise_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        else:
            x = self.depthwise_conv(x)
        x = self.act2(self._norm_view(x, False))
        return pointwise(self.se(x), self.shrink_conv.weight, self.shrink_conv.bias, self.channels_last)
