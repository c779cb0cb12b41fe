"""Blocked local self-attention with haloed keys: every b x b block of queries attends to the (b + 2h) x (b + 2h)
window of keys/values around it, with relative-position logits (Vaswani et al., "Scaling Local Self-Attention for
Parameter Efficient Visual Backbones", CVPR 2021; the layout, init and stride rule follow timm's HaloAttn, there being
no official code).

    attn(i, j) = softmax_j( q_i . k_j * d_qk^-1/2  +  q_i . r^h[kh_j - qh_i]  +  q_i . r^w[kw_j - qw_i] )

i runs over a query block, j over its window; (qh, qw) and (kh, kw) are positions inside the query block and the key
window, and the (2 (b + 2h) - 1)-row tables r^h, r^w are timm's PosEmbedRel (``pos_embed.height_rel/width_rel``).
A stride s > 1 subsamples the queries (a strided 1x1 ``q`` conv: b/s x b/s queries per block, same windows), or,
when s does not divide b (or ``avg_down``), attends at full resolution and average-pools 2x2 afterwards.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.blocks import make_divisible
from metablocks.fields import Heads, Kernel, Padding, Ratio
from metablocks.registry import Component, Context, register
from metablocks.tracing import fx_tracing


class HaloAttentionConfig(Component):
    layout = "channels_first"
    num_heads: Heads = 8
    head_dim: Heads | None = None  # query/key width per head; None: make_divisible(out * qk_ratio, 8) / num_heads
    block_size: Kernel = 8  # b: the side of a query block (the map's sides must be multiples of it)
    halo_size: Padding = 3  # h: keys/values reach h pixels beyond the block on every side
    qk_ratio: Ratio = 1.0
    qkv_bias: bool = False
    avg_down: bool = False  # stride by a 2x2 average pool after attention instead of subsampling the queries
    scale_pos_embed: bool = False  # scale the position logits by d_qk^-1/2 as well (timm's option)

    def _stride_problem(self, stride: int) -> str | None:
        pooled = stride > 1 and (self.avg_down or self.block_size % stride != 0)
        if pooled and stride != 2:
            return (f"stride {stride} needs the queries subsampled by {stride} inside each {self.block_size}x"
                    f"{self.block_size} block (a block_size that is a multiple of {stride}, avg_down false); the "
                    f"2x2 average pool strides by 2 only")
        return None

    def check(self, ctx: Context) -> list[str]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        errors = []
        if out % self.num_heads:
            errors.append(f"the {out} output channels are not divisible by num_heads={self.num_heads}")
        stride_problem = self._stride_problem(ctx.stride)
        if stride_problem:
            errors.append(stride_problem)
        if ctx.resolution is not None and any(side % self.block_size for side in ctx.resolution):
            h, w = ctx.resolution
            errors.append(f"halo attention splits its {h}x{w} input map into {self.block_size}x{self.block_size} query "
                          f"blocks, so both sides must be multiples of block_size={self.block_size} (choose an input "
                          f"size that gives such a map here, or a block_size that divides {math.gcd(h, w)})")
        return errors


@register("token_mixer", "halo_attention", config=HaloAttentionConfig)
class HaloAttention(nn.Module):
    """Halo attention over (B, C, H, W) -> (B, out_dim, H / stride, W / stride) (Vaswani et al. 2021); ``q``, ``kv``
    and ``pos_embed.{height,width}_rel`` are timm's names and layouts (kv interleaves each head's k then v)."""

    def __init__(self, dim: int, *, out_dim: int | None = None, stride: int = 1, num_heads: int = 8,
                 head_dim: int | None = None, block_size: int = 8, halo_size: int = 3, qk_ratio: float = 1.0,
                 qkv_bias: bool = False, avg_down: bool = False, scale_pos_embed: bool = False) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.num_heads = num_heads
        self.dim_qk = head_dim or make_divisible(out_dim * qk_ratio, 8) // num_heads
        self.dim_v = out_dim // num_heads
        self.scale = self.dim_qk ** -0.5
        self.scale_pos_embed = scale_pos_embed
        self.block_size, self.halo_size = block_size, halo_size
        self.win_size = block_size + 2 * halo_size
        pool = stride > 1 and (avg_down or block_size % stride != 0)
        self.q_stride = 1 if pool else stride
        self.q_block = block_size // self.q_stride  # queries per block side
        self.q = nn.Conv2d(dim, num_heads * self.dim_qk, 1, stride=self.q_stride, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, num_heads * (self.dim_qk + self.dim_v), 1, bias=qkv_bias)
        self.pos_embed = PosEmbedRel(self.q_block, self.win_size, self.dim_qk, self.scale)
        self.pool = nn.AvgPool2d(2, 2) if pool else nn.Identity()
        nn.init.trunc_normal_(self.q.weight, std=dim ** -0.5)
        nn.init.trunc_normal_(self.kv.weight, std=dim ** -0.5)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_size(x)
        B, _, H, W = x.shape
        b, bq, heads = self.block_size, self.q_block, self.num_heads
        nh, nw = H // b, W // b
        # queries: (B * heads, blocks, bq * bq, d_qk)
        q = self.q(x).reshape(B * heads, self.dim_qk, nh, bq, nw, bq)
        q = q.permute(0, 2, 4, 3, 5, 1).reshape(B * heads, nh * nw, bq * bq, self.dim_qk)
        # keys/values: the (b + 2h)^2 window around each block, (B * heads, blocks, win^2, d)
        h = self.halo_size
        kv = F.pad(self.kv(x), [h, h, h, h]).unfold(2, self.win_size, b).unfold(3, self.win_size, b)
        kv = kv.reshape(B * heads, self.dim_qk + self.dim_v, nh * nw, -1).permute(0, 2, 3, 1)
        k, v = kv.split([self.dim_qk, self.dim_v], dim=-1)
        rel_h, rel_w = self.pos_embed(q)  # (B * heads, blocks, bq, bq, win): over key rows, over key columns
        n, blocks, win = B * heads, nh * nw, self.win_size
        attn = (q if self.scale_pos_embed else q * self.scale) @ k.transpose(-1, -2)  # (.., bq^2, win^2)
        attn = attn.view(n, blocks, bq, bq, win, win) + rel_h[..., :, None] + rel_w[..., None, :]
        if self.scale_pos_embed:
            attn = attn * self.scale
        # (SDPA with this bias as a float mask is slower on CPU: its masked path checks the mask for -inf rows)
        out = attn.view(n, blocks, bq * bq, win * win).softmax(dim=-1) @ v  # (B * heads, blocks, bq^2, d_v)
        out = out.reshape(B, heads, nh, nw, bq, bq, self.dim_v).permute(0, 1, 6, 2, 4, 3, 5)
        return self.pool(out.reshape(B, heads * self.dim_v, nh * bq, nw * bq))

    @torch.jit.unused
    def _check_size(self, x: Tensor) -> None:
        if x.shape[-2] % self.block_size or x.shape[-1] % self.block_size:
            raise ValueError(f"halo attention needs map sides that are multiples of block_size={self.block_size}, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")


class PosEmbedRel(nn.Module):
    """Relative-position logits q . r^h[kh - qh] and q . r^w[kw - qw] (summed into the attention logits) for a bq x bq
    query block over a win x win window (timm's PosEmbedRel, after Bello et al.'s attention-augmented convolutions):
    offsets kh - qh run from -(bq - 1) to win - 1, table row = offset + win - 1."""

    def __init__(self, block_size: int, win_size: int, dim_head: int, scale: float) -> None:
        super().__init__()
        self.height_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head))
        self.width_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head))
        nn.init.trunc_normal_(self.height_rel, std=scale)
        nn.init.trunc_normal_(self.width_rel, std=scale)
        offsets = torch.arange(win_size)[None, :] - torch.arange(block_size)[:, None] + win_size - 1
        self.register_buffer("index", offsets, persistent=False)  # (bq, win): table row per (query, key) position
        self.block_size, self.win_size = block_size, win_size

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor]:  # (N, blocks, bq^2, d) -> 2 x (N, blocks, bq, bq, win)
        n, blocks, _, d = q.shape
        q = q.reshape(n, blocks, self.block_size, self.block_size, d)
        rel_h = torch.einsum("nbhwd,hkd->nbhwk", q, self.height_rel[self.index])  # (.., qh, qw, kh)
        rel_w = torch.einsum("nbhwd,wkd->nbhwk", q, self.width_rel[self.index])  # (.., qh, qw, kw)
        return rel_h, rel_w
