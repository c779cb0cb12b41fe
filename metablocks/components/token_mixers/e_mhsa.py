"""Efficient multi-head self-attention (E-MHSA) token mixer (Li et al., "Next-ViT: Next Generation Vision Transformer
for Efficient Deployment in Realistic Industrial Scenarios", 2022, https://arxiv.org/abs/2207.05501).

    E-MHSA(z) = Proj(softmax(Q K^T / sqrt(d)) V),  Q = z W_q,  K, V = norm(AvgPool_{s^2}(z)) W_{k,v}

The keys and values come from the H*W tokens average-pooled in runs of sr_ratio^2 consecutive tokens (row-major
order, as the official code's ``AvgPool1d(sr_ratio ** 2)`` over the flattened map; a remainder is dropped), then
normalized (BatchNorm). Names follow timm's ``EfficientAttention`` (``q``, ``k``, ``v``, ``proj``, ``norm``).
"""
from __future__ import annotations

from typing import Annotated, Any

import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Probability, Stride
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class EMhsaConfig(MultiHeadConfig):
    layout = "channels_first"
    qkv_bias: bool = True
    proj_bias: bool = True
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0
    sr_ratio: Stride = 1  # >1: keys/values from runs of sr_ratio^2 tokens, averaged, then ``norm``
    norm: Annotated[Component, Ref("norm")] = "batchnorm"  # on the pooled tokens (timm: BatchNorm1d)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if self.num_heads and self.head_dim:
            if self.num_heads * self.head_dim != ctx.dim:
                errors.append(f"num_heads={self.num_heads} x head_dim={self.head_dim} must equal dim={ctx.dim}")
        elif ctx.dim % (self.num_heads or self.head_dim or 32):
            given = f"num_heads={self.num_heads}" if self.num_heads else f"head_dim={self.head_dim or 32}"
            errors.append(f"dim={ctx.dim} is not divisible by {given}")
        if self.sr_ratio > 1 and ctx.resolution and ctx.resolution[0] * ctx.resolution[1] < self.sr_ratio ** 2:
            errors.append(f"sr_ratio={self.sr_ratio} pools runs of {self.sr_ratio ** 2} tokens, more than the "
                          f"{ctx.resolution[0]}x{ctx.resolution[1]} map has")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim))] if self.sr_ratio > 1 else []

    def build(self, ctx: Context) -> nn.Module:
        num_heads, _ = self.heads(ctx.dim)
        return EMHSA(ctx.dim, num_heads=num_heads, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                     attn_drop=self.attn_drop, proj_drop=self.proj_drop, sr_ratio=self.sr_ratio, norm=self.norm)


@register("token_mixer", "e_mhsa", config=EMhsaConfig)
class EMHSA(nn.Module):
    """Attention of every token over the map's tokens average-pooled by sr_ratio^2 (Next-ViT's E-MHSA), on (B, C, H, W)."""

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, sr_ratio: int = 1, norm: Component) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.pool = num_heads, attn_drop, sr_ratio ** 2
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        # sees the pooled tokens as a (B, C, 1, N / s^2) map; no keys pooled, none (Identity: TorchScript compiles
        # the branch that uses it either way)
        self.norm = build_at(norm, dim, "channels_first") if sr_ratio > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        tokens = x.flatten(2)  # (B, C, N)
        q = self.q(tokens.transpose(1, 2))  # (B, N, C)
        if self.pool > 1:
            tokens = self.norm(F.avg_pool1d(tokens, self.pool)[:, :, None]).squeeze(2)  # (B, C, N / s^2)
        kv_tokens = tokens.transpose(1, 2)  # (B, N', C)
        k, v = self.k(kv_tokens), self.v(kv_tokens)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))  # (B, N, C)
        return out.transpose(1, 2).unflatten(2, (h, w))  # (B, C, H, W)
