"""MOAT's shortcut: average pooling where the block strides, a biased 1x1 conv where it changes the width, each only
when needed (Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models", ICLR 2023;
the official deeplab2 code's ``_shortcut_branch``, model/layers/moat_blocks.py; CoAtNet's, Dai et al. 2021).

Unlike ``projection`` (always a conv, optionally a norm), a strided block that keeps its width has a pool and no conv
(tiny-MOAT-0's first block, 32 -> 32 at stride 2), and there is no norm. The pool is TensorFlow's "same" pool of
``pool_size`` (2 for ImageNet, 3 for deeplab2's dense tasks), which leaves the padding out of each mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.same_padding import avg_pool_same
from metablocks.fields import Kernel
from metablocks.registry import Component, Context, register

torch.fx.wrap("avg_pool_same")  # one traced call here too (torch.fx patches the name in the caller's module)


class PoolProjectConfig(Component):
    layout = "any"  # channels-last: the pool on a permuted view, the 1x1 conv as a matmul (same weights)
    changes_width = True  # built with the block's in -> out width and stride
    pool_size: Kernel = 2  # of the average pool at the block's stride
    bias: bool = True  # of the 1x1 conv

    def build(self, ctx: Context) -> nn.Module:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return self.module(ctx.dim, out, stride=ctx.stride, pool_size=self.pool_size, bias=self.bias,
                           channels_last=ctx.channels_last)


@register("shortcut", "pool_project", config=PoolProjectConfig)
class PoolProject(nn.Module):
    """[avg pool (stride > 1)] -> [1x1 conv (width change)]: MOAT's shortcut (Yang et al. 2022)."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, pool_size: int = 2, bias: bool = True,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.stride, self.pool_size, self.channels_last = stride, pool_size, channels_last
        self.conv = nn.Conv2d(in_dim, out_dim, 1, bias=bias) if in_dim != out_dim else None
        self.projects = self.conv is not None

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))
        if self.stride > 1:  # channels-last: pooled as a (B, C, H, W) view in channels_last memory format
            x = (avg_pool_same(x.permute(0, 3, 1, 2), self.pool_size, self.stride).permute(0, 2, 3, 1)
                 if self.channels_last else avg_pool_same(x, self.pool_size, self.stride))
        conv = self.conv
        if conv is None:
            return x
        return F.linear(x, conv.weight.flatten(1), conv.bias) if self.channels_last else conv(x)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pool_size={self.pool_size}"
