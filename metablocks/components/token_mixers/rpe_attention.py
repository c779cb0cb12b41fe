"""Self-attention with image relative position encoding on the keys: a learned bias per head for each bucket of the
Euclidean distance between two positions (iRPE, Wu et al., "Rethinking and Improving Relative Position Encoding for
Vision Transformer", ICCV 2021; PartialNet's PAT_sf, Huang et al., "Partial Channel Network: Compute Fewer, Perform
Better", 2025).

    attn = softmax(q k^T / sqrt(d) + table[h, bucket(|p_i - p_j|)])        bucket(r) = r, for r <= alpha;
                                                                           else alpha + log(r / alpha) / log(gamma /
                                                                           alpha) * (beta - alpha), capped at beta
with alpha = ratio, beta = 2 ratio, gamma = 8 ratio (iRPE's piecewise index; r rounded first). Only iRPE's "bias"
mode on keys with the Euclidean method is here (what PartialNet uses); the buckets follow the map's size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Heads, Probability, Ratio
from metablocks.registry import Component, Context, register
from metablocks.tracing import fx_tracing


class RpeAttentionConfig(Component):
    layout = "channels_first"
    num_heads: Heads = 4
    qkv_bias: bool = False
    proj_bias: bool = True
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0
    ratio: Ratio = 20.0  # iRPE's bucket ratio: distances up to ``ratio`` get a bucket each, then log-spaced to 2 ratio
    shared_head: bool = False  # one table for all heads

    def check(self, ctx: Context) -> list[str]:
        if ctx.dim % self.num_heads:
            return [f"dim={ctx.dim} is not divisible by num_heads={self.num_heads}"]
        return []

    def build(self, ctx: Context) -> nn.Module:
        return RpeAttention(ctx.dim, **self.kwargs(), resolution=ctx.resolution)


def euclidean_buckets(height: int, width: int, ratio: float, device: torch.device) -> Tensor:
    """(HW, HW) bucket index of every pair of positions, in [0, 2 * int(2 ratio)] (iRPE's 'euc' method, no skip)."""
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    distance = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).float().sqrt().round()
    far = (alpha + torch.log(distance / alpha) / math.log(gamma / alpha) * (beta - alpha)).round().clamp(max=beta)
    return torch.where(distance <= alpha, distance, far).long() + int(beta)


@register("token_mixer", "rpe_attention", config=RpeAttentionConfig)
class RpeAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a (B, C, H, W) map, with iRPE's key bias (``rpe_table``)."""

    def __init__(self, dim: int, *, num_heads: int = 4, qkv_bias: bool = False, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, ratio: float = 20.0, shared_head: bool = False,
                 resolution: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.ratio = num_heads, attn_drop, ratio
        # the buckets of the map size the model is built for, computed once (another size: computed, then kept)
        self.size = tuple(resolution) if resolution else (0, 0)
        buckets = euclidean_buckets(*self.size, ratio, torch.device("cpu")) if resolution else torch.zeros(0, 0).long()
        self.register_buffer("buckets", buckets, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpe_table = nn.Parameter(torch.zeros(1 if shared_head else num_heads, 2 * int(2 * ratio) + 1))
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if not torch.jit.is_scripting() and fx_tracing():  # sizes are proxies: the buckets as operations
            buckets = euclidean_buckets(H, W, self.ratio, x.device)
        elif (H, W) == self.size:
            buckets = self.buckets
        else:
            buckets = euclidean_buckets(H, W, self.ratio, x.device)
            if not torch.jit.is_scripting():
                self._remember(buckets, (H, W))
        bias = self.rpe_table[:, buckets]  # (heads or 1, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype)[None],
                                             dropout_p=self.attn_drop if self.training else 0.0)  # (B, heads, N, d)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, H * W, C)))  # (B, N, C)
        return out.transpose(1, 2).reshape(B, C, H, W)

    @torch.jit.unused
    def _remember(self, buckets: Tensor, size: tuple[int, int]) -> None:
        """Eager mode: keep the buckets of a new map size for the next call (the official code caches them too)."""
        self.buckets, self.size = buckets, size
