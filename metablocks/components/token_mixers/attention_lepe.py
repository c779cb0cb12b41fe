"""Global multi-head attention plus a depthwise conv of its input, BiFormer's last stage (``AttentionLePE`` in the
official models/_common.py; Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023;
LePE after Dong et al., "CSWin Transformer", CVPR 2022):

    out = proj(softmax(Q K^T / sqrt(d)) V + dwconv(x))

The official code convolves the block's normalized input x, not V (CSWin's LePE convolves V).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig, _split_heads
from metablocks.fields import Kernel
from metablocks.registry import Context, register


class AttentionLePEConfig(MultiHeadConfig):
    layout = "channels_last"
    lepe_kernel_size: Kernel = 5  # the official side_dwconv
    qkv_bias: bool = False
    proj_bias: bool = True

    def check(self, ctx: Context) -> list[str]:
        errors = self.partition_problems(ctx.dim)
        if self.lepe_kernel_size % 2 == 0:
            errors.append(f"lepe_kernel_size must be odd to keep the map size, got {self.lepe_kernel_size}")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        num_heads, _ = self.heads(ctx.dim)
        return AttentionLePE(ctx.dim, num_heads=num_heads, lepe_kernel_size=self.lepe_kernel_size,
                             qkv_bias=self.qkv_bias, proj_bias=self.proj_bias)


@register("token_mixer", "attention_lepe", config=AttentionLePEConfig)
class AttentionLePE(nn.Module):
    """Attention over all H*W tokens through scaled_dot_product_attention, plus a depthwise conv of the input
    (BiFormer's stage-4 mixer). (B, H, W, C) in and out."""

    def __init__(self, dim: int, *, num_heads: int, lepe_kernel_size: int = 5, qkv_bias: bool = False,
                 proj_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel_size, padding=lepe_kernel_size // 2, groups=dim)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        tokens = x.flatten(1, 2)  # (B, N, C)
        q, k, v = _split_heads(self.qkv(tokens), 3, self.num_heads).unbind(0)  # 3 x (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        out = out.permute(0, 2, 1, 3).flatten(2).unflatten(1, (x.shape[1], x.shape[2]))  # (B, H, W, C)
        lepe = self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out + lepe)
