"""Efficient channel attention: x * sigmoid(conv1d_k(mean_HW x)) over the channel axis (Wang et al., "ECA-Net: Efficient
Channel Attention for Deep Convolutional Neural Networks", CVPR 2020).

Like squeeze-and-excitation without the bottleneck MLP: the C pooled values are one length-C signal, and a single
bias-free 1-D conv of odd size k (zero padding (k - 1) / 2) lets every channel see its k neighbours. With
``kernel_size: null`` k follows the channels as the paper's Eq. (12), k = |log2(C) / gamma + beta / gamma|_odd (at
least 3), the rule of timm's ``EcaModule``; the official ECA-ResNets fix k per stage ([3, 5, 5, 7]).

As a component (channel_mixer ``eca``) it is a gate step (``{path: [eca], kind: plain}``) or the ``attn:`` of a
``bottleneck`` (after its last norm, timm's ``se`` attribute).
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from metablocks.fields import Kernel
from metablocks.registry import Component, Context, register


def adaptive_kernel(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """The paper's Eq. (12): the odd k nearest above |log2(C) / gamma + beta / gamma|, at least 3 (timm's EcaModule)."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)  # noqa: FURB163 (timm's expression, float for float)
    return max(t if t % 2 else t + 1, 3)


class EcaConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel | None = None  # odd; None: adaptive from the channels (Eq. 12, with gamma and beta)
    gamma: Annotated[float, Field(gt=0.0, le=64.0, allow_inf_nan=False)] = 2.0  # of the adaptive rule
    beta: Annotated[float, Field(ge=-64.0, le=64.0, allow_inf_nan=False)] = 1.0  # of the adaptive rule

    def kernel(self, dim: int) -> int:
        return self.kernel_size if self.kernel_size is not None else adaptive_kernel(dim, self.gamma, self.beta)

    def check(self, ctx: Context) -> list[str]:
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            return [f"kernel_size must be odd so the 1-D conv keeps the {ctx.dim} channels aligned, got "
                    + str(self.kernel_size)]
        return []

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, kernel_size=self.kernel(ctx.dim))


@register("channel_mixer", "eca", config=EcaConfig)
class EfficientChannelAttention(nn.Module):
    """x * sigmoid(conv1d_k(mean_HW x)) on (B, C, H, W); ``conv`` is timm's and the official ``nn.Conv1d(1, 1, k)``
    (Wang et al. 2020)."""

    def __init__(self, dim: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        pooled = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C): the channels as one 1-D signal
        gate = torch.sigmoid(self.conv(pooled))  # (B, 1, C): each channel from its k neighbours
        return x * gate.view(x.shape[0], -1, 1, 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}"
