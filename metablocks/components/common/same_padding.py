"""TensorFlow's ``padding="same"`` for strided convolutions and average pooling, so models whose official code is
TensorFlow (MOAT, Yang et al. 2022; EfficientNet, Tan & Le 2019) take their released weights pixel for pixel.

A stride-s "same" layer gives ceil(H / s) rows and pads ``max((ceil(H / s) - 1) * s + k - H, 0)`` rows, the odd one
at the bottom (right): a 3x3 stride-2 conv on an even map pads 0 above and 1 below, where PyTorch's ``padding=1``
pads 1 and 1 (same output size, the sampling grid shifted by one pixel). TF's average pool leaves the padding out of
the count. At stride 1 with an odd kernel both conventions are the symmetric ``k // 2``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PaddingMode = Literal["same", "symmetric"]
"""``same``: TensorFlow's (asymmetric at stride 2 on even maps); ``symmetric``: PyTorch's ``padding=k // 2``."""


def same_pads(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis of ``size`` under TF's "same" rule."""
    total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel_size: int, stride: int, value: float = 0.0) -> Tensor:
    """``x`` (B, C, H, W) padded as TF's "same" pads it for a ``kernel_size`` window at ``stride``."""
    top, bottom = same_pads(x.shape[-2], kernel_size, stride)
    left, right = same_pads(x.shape[-1], kernel_size, stride)
    return F.pad(x, [left, right, top, bottom], value=value)


torch.fx.wrap("pad_same")  # traced as one call: the pads depend on the input's size (proxies under tracing)


def avg_pool_same(x: Tensor, kernel_size: int, stride: int) -> Tensor:
    """TF's AveragePooling2D(padding="same"): the mean over each window's positions inside the map."""
    top, bottom = same_pads(x.shape[-2], kernel_size, stride)
    left, right = same_pads(x.shape[-1], kernel_size, stride)
    if top + bottom + left + right == 0:
        return F.avg_pool2d(x, kernel_size, stride)
    pads = [left, right, top, bottom]
    total = F.avg_pool2d(F.pad(x, pads), kernel_size, stride)
    inside = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pads), kernel_size, stride)  # share of real positions
    return total / inside


torch.fx.wrap("avg_pool_same")


class Conv2dSame(nn.Conv2d):
    """A Conv2d padded as TensorFlow's ``padding="same"`` pads it, for every input size (same weights as Conv2d)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(pad_same(x, self.kernel_size[0], self.stride[0]), self.weight, self.bias)


def conv2d(in_dim: int, out_dim: int, kernel_size: int, *, stride: int = 1, groups: int = 1, bias: bool = True,
           padding: PaddingMode = "symmetric") -> nn.Conv2d:
    """A square conv padded to keep ceil(H / stride) rows: a plain Conv2d(padding=k // 2) where both rules agree
    (stride 1, odd kernel), else under ``padding``'s rule."""
    if padding == "same" and (stride > 1 or kernel_size % 2 == 0):
        return Conv2dSame(in_dim, out_dim, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)
    return nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias)
