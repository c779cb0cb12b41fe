"""Multi-head self-attention token mixer (Vaswani et al. 2017; ViT, Dosovitskiy et al. 2021), with optional
spatial reduction of keys and values (PVT, Wang et al. 2021; Next-ViT, Li et al. 2022)."""
from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from metablocks.fields import Heads, Probability, Stride
from metablocks.registry import Component, Context, register


class MultiHeadConfig(Component):
    """Head fields shared by every attention mixer: give head_dim, num_heads, or both (default head_dim 32)."""

    head_dim: Heads | None = None  # default 32 when num_heads is not given either
    num_heads: Heads | None = None

    def heads(self, dim: int) -> tuple[int, int]:
        """(num_heads, head_dim) for ``dim`` channels."""
        if self.num_heads and self.head_dim:
            return self.num_heads, self.head_dim
        if self.num_heads:
            return self.num_heads, dim // self.num_heads
        head_dim = self.head_dim or 32
        return max(dim // head_dim, 1), head_dim


class AttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    qkv_bias: bool = False
    proj_bias: bool = False
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0
    sr_ratio: Stride = 1  # >1: keys/values from a sr_ratio-strided conv of the map, then LayerNorm

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if self.num_heads and not self.head_dim and ctx.dim % self.num_heads:
            errors.append(f"dim={ctx.dim} is not divisible by num_heads={self.num_heads}")
        if not self.num_heads and ctx.dim % (self.head_dim or 32) and ctx.dim > (self.head_dim or 32):
            errors.append(f"dim={ctx.dim} is not divisible by head_dim={self.head_dim or 32}")
        if self.sr_ratio > 1 and ctx.resolution and min(ctx.resolution) < self.sr_ratio:
            errors.append(f"sr_ratio={self.sr_ratio} exceeds the {ctx.resolution[0]}x{ctx.resolution[1]} map")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        num_heads, head_dim = self.heads(ctx.dim)
        return Attention(ctx.dim, num_heads=num_heads, head_dim=head_dim, qkv_bias=self.qkv_bias,
                         proj_bias=self.proj_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
                         sr_ratio=self.sr_ratio)


@register("token_mixer", "attention", config=AttentionConfig)
class Attention(nn.Module):
    """softmax(QK^T / sqrt(d)) V over all H*W tokens through scaled_dot_product_attention (Vaswani et al. 2017)."""

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, qkv_bias: bool = False, proj_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, sr_ratio: int = 1) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.sr_ratio = num_heads, attn_drop, sr_ratio
        inner = num_heads * head_dim
        if sr_ratio == 1:
            self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, inner, bias=qkv_bias)
            self.kv = nn.Linear(dim, inner * 2, bias=qkv_bias)
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        height = x.shape[1]
        tokens = rearrange(x, "b h w c -> b (h w) c")
        if self.sr_ratio == 1:
            q, k, v = rearrange(self.qkv(tokens), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        else:
            q = rearrange(self.q(tokens), "b n (h d) -> b h n d", h=self.num_heads)
            reduced = self.sr(rearrange(x, "b h w c -> b c h w"))
            reduced = self.norm(rearrange(reduced, "b c h w -> b (h w) c"))
            k, v = rearrange(self.kv(reduced), "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)  # (B, heads, N, d)
        out = self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))
        return rearrange(out, "b (h w) c -> b h w c", h=height)
