"""Multi-head self-attention token mixer (Vaswani et al. 2017; ViT, Dosovitskiy et al. 2021), with optional
spatial reduction of keys and values (PVT, Wang et al. 2021; Next-ViT, Li et al. 2022)."""
from __future__ import annotations

import torch.nn.functional as F
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

    def exact_heads(self, dim: int) -> tuple[int, int]:
        """(num_heads, head_dim) that split ``dim`` exactly, for mixers whose heads partition the channels: as
        ``heads``, except that with neither given the head count is the one nearest dim / 32 that divides dim."""
        if self.num_heads or self.head_dim:
            return self.heads(dim)
        count = max(dim // 32, 1)
        while dim % count:
            count -= 1
        return count, dim // count

    def partition_problems(self, dim: int, *, exact: bool = False) -> list[str]:
        """For mixers whose heads partition the channels: ``dim`` must be num_heads x head_dim (``exact``: the split
        of ``exact_heads``, else of ``heads``)."""
        num_heads, head_dim = self.exact_heads(dim) if exact else self.heads(dim)
        return [] if num_heads * head_dim == dim else [f"dim={dim} is not num_heads={num_heads} x head_dim={head_dim}"]

    def head_problems(self, dim: int) -> list[str]:
        """``dim`` split into the heads asked for: num_heads must divide it, and so must head_dim (when it is smaller)."""
        errors = []
        if self.num_heads and not self.head_dim and dim % self.num_heads:
            errors.append(f"dim={dim} is not divisible by num_heads={self.num_heads}")
        if not self.num_heads and dim % (self.head_dim or 32) and dim > (self.head_dim or 32):
            errors.append(f"dim={dim} is not divisible by head_dim={self.head_dim or 32}")
        return errors


class AttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    qkv_bias: bool = False
    proj_bias: bool = False
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0
    sr_ratio: Stride = 1  # >1: keys/values from a sr_ratio-strided conv of the map, then LayerNorm

    def check(self, ctx: Context) -> list[str]:
        errors = self.head_problems(ctx.dim)
        if self.sr_ratio > 1 and ctx.resolution and min(ctx.resolution) < self.sr_ratio:
            errors.append(f"sr_ratio={self.sr_ratio} exceeds the {ctx.resolution[0]}x{ctx.resolution[1]} map")
        return errors

    def token_mode(self) -> str:
        """Over a token stream it attends over the prefix tokens with the map's (ViT); with a spatial reduction of
        keys and values (a conv of the map) it runs on the map alone and the prefix passes it."""
        return "attend" if self.sr_ratio == 1 else "passthrough"

    def build(self, ctx: Context) -> nn.Module:
        num_heads, head_dim = self.heads(ctx.dim)
        return Attention(ctx.dim, num_heads=num_heads, head_dim=head_dim, qkv_bias=self.qkv_bias,
                         proj_bias=self.proj_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
                         sr_ratio=self.sr_ratio, tokens=ctx.layout == "tokens")


@register("token_mixer", "attention", config=AttentionConfig)
class Attention(nn.Module):
    """softmax(QK^T / sqrt(d)) V over all H*W tokens through scaled_dot_product_attention (Vaswani et al. 2017)."""

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, qkv_bias: bool = False, proj_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, sr_ratio: int = 1, tokens: bool = False) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.sr_ratio = num_heads, attn_drop, sr_ratio
        self.tokens = tokens  # takes a token stream (B, N, C) as it is, instead of a (B, H, W, C) map
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

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C), or a token stream (B, N, C)
        # reshape/permute rather than einops: TorchScript and torch.fx take these (the same views einops makes)
        tokens = x if self.tokens else x.flatten(1, 2)  # (B, N, C)
        if hasattr(self, "qkv"):  # sr_ratio 1 (hasattr: TorchScript compiles only the branch this module has)
            q, k, v = _split_heads(self.qkv(tokens), 3, self.num_heads).unbind(0)  # 3 x (B, heads, N, d)
        else:
            q = _split_heads(self.q(tokens), 1, self.num_heads)[0]
            reduced = self.sr(x.permute(0, 3, 1, 2))  # (B, C, H/r, W/r)
            reduced = self.norm(reduced.permute(0, 2, 3, 1).flatten(1, 2))  # (B, N/r^2, C)
            k, v = _split_heads(self.kv(reduced), 2, self.num_heads).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)  # (B, heads, N, d)
        out = self.proj_drop(self.proj(out.permute(0, 2, 1, 3).flatten(2)))  # (B, N, C)
        return out if self.tokens else out.unflatten(1, (x.shape[1], x.shape[2]))  # (B, H, W, C)


def _split_heads(x: Tensor, parts: int, num_heads: int) -> Tensor:
    """(B, N, parts * heads * d) -> (parts, B, heads, N, d), as ``rearrange("b n (p h d) -> p b h n d")``."""
    return x.reshape(x.shape[0], x.shape[1], parts, num_heads, -1).permute(2, 0, 3, 1, 4)
