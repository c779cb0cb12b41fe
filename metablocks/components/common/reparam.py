"""Structural re-parameterization helpers (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021).

A re-parameterizable module trains with extra branches and BatchNorms and has a ``reparameterize()`` method that
folds them into fewer, plain layers computing the same function in eval mode. ``metablocks.deploy`` calls it
on every module of a model that has one: the deploy switch for RepLKNet, UniRepLKNet and friends.

A module whose output comes straight out of a conv may also have ``absorb_affine(scale, shift)``: it then takes in
a per-channel ``y * scale + shift`` applied to its output. ``metablocks.deploy`` uses it inside each block to
fold a BatchNorm that follows such a module, and the branch's layer scale, into it (UniRepLKNet's deploy form).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def fuse_conv_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one conv equal to conv(weight, bias) -> BN in eval mode.

    BN(y) = gamma * (y - mean) / std + beta, so the kernel scales by gamma / std per output channel.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    shift = bn.bias - bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), shift


def dilate_kernel(kernel: Tensor, dilation: int) -> Tensor:
    """The dense kernel equal to ``kernel`` (..., k, k) applied with ``dilation``: size dilation * (k - 1) + 1."""
    k = kernel.shape[-1]
    span = dilation * (k - 1) + 1
    dense = kernel.new_zeros(*kernel.shape[:-2], span, span)
    dense[..., ::dilation, ::dilation] = kernel
    return dense


def center_pad(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad a (..., k, k) kernel to (..., size, size), centred (same output with padding size // 2)."""
    pad = (size - kernel.shape[-1]) // 2
    return nn.functional.pad(kernel, (pad, pad, pad, pad))


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) with BN(y) = y * scale + shift per channel in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def absorb_into_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor | None) -> nn.Conv2d:
    """A biased conv equal to ``conv(x) * scale + shift`` (per output channel)."""
    bias = conv.bias * scale if conv.bias is not None else torch.zeros_like(scale)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=True).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(bias if shift is None else bias + shift)  # type: ignore[union-attr]
    return fused


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm; ``reparameterize()`` folds the BN into a biased conv (names as in RepLKNet)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1, *, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                              bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if self.bn is None else self.bn(self.conv(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is not None:
            self.conv = fold_bn_into_conv(self.conv, self.bn)
            self.bn = None


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new biased conv equal to conv -> bn in eval mode (same stride, padding, dilation, groups)."""
    weight, bias = fuse_conv_bn(conv.weight, conv.bias, bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=True).to(weight)
    fused.weight.data.copy_(weight)
    fused.bias.data.copy_(bias)  # type: ignore[union-attr]
    return fused
