"""Dilated Reparam Block: a large depthwise conv plus parallel dilated small ones, fused into one conv for inference
(Ding et al., "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series
and Image Recognition", CVPR 2024)."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from metablocks.components.common.reparam import (
    absorb_into_conv,
    center_pad,
    dilate_kernel,
    fuse_conv_bn,
)
from metablocks.fields import Dilation, Kernel
from metablocks.registry import Component, Context, register

# The paper's (kernel, dilation) branches for each main kernel size (UniRepLKNet, Sec. 3.2 and the official code).
PAPER_BRANCHES: dict[int, tuple[tuple[int, int], ...]] = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 2), (3, 3)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}


class DilatedReparamConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 13
    # (kernel, dilation) of each parallel branch; None: the paper's choice for ``kernel_size`` (PAPER_BRANCHES)
    branches: list[tuple[Kernel, Dilation]] | None = Field(None, max_length=16)

    def check(self, ctx: Context) -> list[str]:
        k = self.kernel_size
        errors = [] if k % 2 else [f"kernel_size must be odd to keep the map size, got {k}"]
        if self.branches is None and k not in PAPER_BRANCHES:
            errors.append(f"the paper gives dilated branches only for kernel_size in {sorted(PAPER_BRANCHES)}, got {k}; "
                          f"list them as branches: [[kernel, dilation], ...]")
        for small, rate in self.branches or []:
            span = rate * (small - 1) + 1
            if small % 2 == 0 or rate < 1:
                errors.append(f"branch [{small}, {rate}] needs an odd kernel and a dilation >= 1")
            elif span > k:
                errors.append(f"branch [{small}, {rate}] spans {span}x{span}, more than kernel_size={k}; "
                              f"it could not be merged into the large kernel")
        return errors


def _depthwise(dim: int, kernel_size: int, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Conv2d(dim, dim, kernel_size, padding=padding, dilation=dilation, groups=dim, bias=bias)


@register("token_mixer", "dilated_reparam", config=DilatedReparamConfig)
class DilatedReparam(nn.Module):
    """BN(dw k x k (x)) + sum_i BN_i(dw k_i x k_i, dilation r_i (x)); ``reparameterize()`` merges all into ``lk_origin``.

    A dilated k_i x k_i kernel equals a dense r_i(k_i - 1) + 1 kernel with zeros between its taps, so after each
    BN is folded into its conv every branch adds onto the centre of the large kernel (UniRepLKNet, Ding et al. 2024).
    Attribute names follow the official code (lk_origin, origin_bn, dil_conv_k{k}_{r}, dil_bn_k{k}_{r}).
    """

    def __init__(self, dim: int, *, kernel_size: int = 13, branches: list[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.branches = tuple(tuple(b) for b in branches) if branches is not None else PAPER_BRANCHES[kernel_size]
        self.lk_origin = _depthwise(dim, kernel_size)
        self.origin_bn: nn.BatchNorm2d | None = nn.BatchNorm2d(dim)
        for k, r in self.branches:
            self.add_module(f"dil_conv_k{k}_{r}", _depthwise(dim, k, dilation=r))
            self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(dim))

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the plan of named submodules unrolled (metablocks/tracing.py): same submodules, same names."""
        from metablocks.tracing import unrolled

        return unrolled(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if self.origin_bn is None:  # fused
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + self._modules[f"dil_bn_k{k}_{r}"](self._modules[f"dil_conv_k{k}_{r}"](x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every BN into its conv and every dilated branch into the large kernel: one biased depthwise conv."""
        if self.origin_bn is None:
            return
        weight, bias = fuse_conv_bn(self.lk_origin.weight, None, self.origin_bn)
        for k, r in self.branches:
            conv, bn = self._modules.pop(f"dil_conv_k{k}_{r}"), self._modules.pop(f"dil_bn_k{k}_{r}")
            branch_weight, branch_bias = fuse_conv_bn(conv.weight, None, bn)
            weight = weight + center_pad(dilate_kernel(branch_weight, r), self.kernel_size)
            bias = bias + branch_bias
        self.lk_origin = _depthwise(self.dim, self.kernel_size, bias=True).to(weight)
        self.lk_origin.weight.copy_(weight)
        self.lk_origin.bias.copy_(bias)  # type: ignore[union-attr]
        self.origin_bn = None

    @torch.no_grad()
    def absorb_affine(self, scale: Tensor, shift: Tensor | None) -> None:
        """Fold a per-channel ``out * scale + shift`` that follows this mixer into the fused conv."""
        self.reparameterize()
        self.lk_origin = absorb_into_conv(self.lk_origin, scale, shift)

    def extra_repr(self) -> str:
        fused = ", fused" if self.origin_bn is None else ""
        return f"dim={self.dim}, kernel_size={self.kernel_size}, branches={list(self.branches)}{fused}"
