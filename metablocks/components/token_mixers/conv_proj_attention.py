"""Attention with convolutional projections (Wu et al., "CvT: Introducing Convolutions to Vision Transformers",
ICCV 2021): the queries, keys and values are each a depthwise conv + BatchNorm of the map, keys and values strided,
then a linear projection; the prefix tokens (CvT's class token) skip the convs and are put back in front.

    q = W_q [p; flat(BN(dw_q(X)))],  k = W_k [p; flat(BN(dw_k^s(X)))],  v = W_v [p; flat(BN(dw_v^s(X)))]
    out = W_o softmax(q k^T * scale) v          (p: the prefix tokens; X: the map tokens as an H x W map)

With stride s the keys and values come from a ceil(H/s) x ceil(W/s) map: P + ceil(H/s) ceil(W/s) of them. The
official code scales the logits by 1/sqrt(dim) of all heads together (``scale: dim``), not per head.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Kernel, Probability, Stride
from metablocks.registry import Context, register


class ConvProjAttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    tokens = "attend"  # over a token stream it attends over the prefix tokens too; they skip the convs
    kernel_size: Kernel = 3  # of the depthwise convs, padded to keep the map ("same"): odd
    stride_kv: Stride = 2  # of the key and value convs (the queries keep every token)
    qkv_bias: bool = True
    proj_bias: bool = True
    scale: Literal["dim", "head_dim"] = "dim"  # logits * 1/sqrt(all heads' width) (CvT's code) or per head
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        errors = self.head_problems(ctx.dim)
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size={self.kernel_size} must be odd: the query conv keeps the map's size "
                          f"(padding kernel_size // 2), so that every token gets its query")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        num_heads, head_dim = self.heads(ctx.dim)
        return ConvProjAttention(ctx.dim, num_heads=num_heads, head_dim=head_dim, kernel_size=self.kernel_size,
                                 stride_kv=self.stride_kv, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                                 scale=self.scale, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
                                 prefix=len(ctx.prefix), tokens=ctx.layout == "tokens")


class DepthwiseBN(nn.Module):
    """A depthwise conv (no bias) then BatchNorm, flattened to tokens: (B, C, H, W) -> (B, H'W', C)."""

    def __init__(self, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


@register("token_mixer", "conv_proj_attention", config=ConvProjAttentionConfig)
class ConvProjAttention(nn.Module):
    """softmax(q k^T * scale) v with q, k, v from depthwise conv + BN projections of the map (CvT, Wu et al. 2021);
    (B, H, W, C) in and out, or a token stream (B, P + H*W, C) with its map's (H, W)."""

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, kernel_size: int = 3, stride_kv: int = 2,
                 qkv_bias: bool = True, proj_bias: bool = True, scale: str = "dim", attn_drop: float = 0.0,
                 proj_drop: float = 0.0, prefix: int = 0, tokens: bool = False) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.attn_drop, self.prefix, self.tokens = num_heads, attn_drop, prefix, tokens
        self.scale = (inner if scale == "dim" else head_dim) ** -0.5
        self.conv_proj_q = DepthwiseBN(dim, kernel_size, 1)
        self.conv_proj_k = DepthwiseBN(dim, kernel_size, stride_kv)
        self.conv_proj_v = DepthwiseBN(dim, kernel_size, stride_kv)
        self.proj_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        if self.tokens:  # (B, P + H*W, C): the prefix tokens split off, the map tokens as a map
            if hw is None:
                raise ValueError("conv_proj_attention on a token stream needs its map's size: call it as "
                                 "mixer(x, hw=(H, W)) (a token stage's block does)")
            grid = x[:, self.prefix:].transpose(1, 2).unflatten(2, hw)  # (B, C, H, W)
        else:  # a (B, H, W, C) map
            grid = x.permute(0, 3, 1, 2)
        q, k, v = self.conv_proj_q(grid), self.conv_proj_k(grid), self.conv_proj_v(grid)  # (B, tokens, C)
        if self.tokens and self.prefix:  # the prefix tokens, unconvolved, back in front (CvT's forward_conv)
            prefix = x[:, : self.prefix]
            q, k, v = torch.cat([prefix, q], 1), torch.cat([prefix, k], 1), torch.cat([prefix, v], 1)
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                             scale=self.scale)  # (B, heads, N, d)
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))  # (B, N, C)
        return out if self.tokens else out.unflatten(1, (x.shape[1], x.shape[2]))

    def _heads(self, x: Tensor) -> Tensor:
        """(B, N, heads * d) -> (B, heads, N, d), as ``rearrange("b n (h d) -> b h n d")``."""
        return x.unflatten(2, (self.num_heads, -1)).transpose(1, 2)
