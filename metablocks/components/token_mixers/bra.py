"""Bi-level routing attention (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023).

The map is cut into n_win x n_win regions. Level one routes regions: region-mean queries against region-mean keys give
a region affinity, and each region keeps its ``topk`` most related regions. Level two is token attention: every query
of a region attends over the keys and values of its routed regions only. A depthwise conv of V over the whole map
(LCE / LePE) is added before the output projection:

    A_r = mean(Q_r) mean(K)^T * s,   I_r = topk(A_r)            (region routing; no gradient, as the official code)
    out = proj(softmax(Q_r K_{I_r}^T * s) V_{I_r} + dwconv(V))   (token attention in the routed regions)
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, Strict
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Kernel
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing

Regions = Annotated[int, Strict(), Field(ge=1, le=64)]  # regions per side (BiFormer: 7)
TopK = Annotated[int, Strict(), Field(ge=1, le=4096)]  # routed regions per region (at most n_win ** 2)


class BiLevelRoutingAttentionConfig(MultiHeadConfig):
    """BiFormer's BRA as in the official ``ops/bra_legacy.py`` (kv_downsample_mode identity, qk_dim = dim, hard
    non-differentiable routing: what BiFormer-T/S/B use). ``scale: dim`` is the official 1/sqrt(C) of all heads
    together (``qk_dim ** -0.5``), used for routing and attention alike; ``head_dim`` gives the usual 1/sqrt(d)."""

    layout = "channels_last"
    n_win: Regions = 7
    topk: TopK = 4
    lepe_kernel_size: Kernel = 5  # the official side_dwconv
    qkv_bias: bool = True
    proj_bias: bool = True
    scale: Literal["dim", "head_dim"] = "dim"

    def check(self, ctx: Context) -> list[str]:
        errors = self.partition_problems(ctx.dim)
        if self.topk > self.n_win ** 2:
            errors.append(f"topk={self.topk} exceeds the n_win x n_win = {self.n_win ** 2} regions there are")
        if ctx.resolution and any(r % self.n_win for r in ctx.resolution):
            where = f" of stage {ctx.stage}" if ctx.stage is not None else ""
            h, w = ctx.resolution
            errors.append(f"n_win={self.n_win} does not divide the {h}x{w} map{where}: the map is cut into "
                          f"{self.n_win}x{self.n_win} regions, so its sides must be multiples of {self.n_win}")
        if self.lepe_kernel_size % 2 == 0:
            errors.append(f"lepe_kernel_size must be odd to keep the map size, got {self.lepe_kernel_size}")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        num_heads, _ = self.heads(ctx.dim)
        return BiLevelRoutingAttention(ctx.dim, num_heads=num_heads, n_win=self.n_win, topk=self.topk,
                                       lepe_kernel_size=self.lepe_kernel_size, qkv_bias=self.qkv_bias,
                                       proj_bias=self.proj_bias, scale=self.scale)


def regions(x: Tensor, n_win: int) -> Tensor:
    """(B, H, W, C) -> (B, n_win^2, H/n_win * W/n_win, C): region r = (row j, column i) is r = j * n_win + i, its
    tokens read row-major (einops ``b (j h) (i w) c -> b (j i) (h w) c``)."""
    h, w = x.shape[1] // n_win, x.shape[2] // n_win
    x = x.reshape(x.shape[0], n_win, h, n_win, w, x.shape[3]).transpose(2, 3)  # (B, n_win, n_win, h, w, C)
    return x.reshape(x.shape[0], n_win * n_win, h * w, x.shape[-1])


def route(q: Tensor, k: Tensor, topk: int, scale: float) -> Tensor:
    """Level one: (B, R, N, C) region tokens -> (B, R, topk) indices of the regions each region attends to, by the
    affinity of the region means (mean(q_r) * scale) . mean(k_s), highest first. No gradient flows through it."""
    q_win, k_win = q.detach().mean(2), k.detach().mean(2)  # (B, R, C)
    affinity = (q_win * scale) @ k_win.transpose(-2, -1)  # (B, R, R)
    return affinity.topk(topk, dim=-1)[1]


def gather_regions(kv: Tensor, index: Tensor) -> Tensor:
    """(B, R, N, C) tokens of every region, (B, R, k) routed indices -> (B, R, k * N, C): for each region, the tokens
    of its k routed regions one after another."""
    b, r, n, c = kv.shape[0], kv.shape[1], kv.shape[2], kv.shape[3]
    k = index.shape[-1]
    # rows of the (B*R, N*C) table: region index + R * sample; index_select copies whole rows (torch.gather with an
    # expanded index looks up every element: 4x slower at BiFormer's stage 3)
    rows = (index + r * torch.arange(b, device=index.device)[:, None, None]).flatten()  # (B*R*k,)
    return kv.reshape(b * r, n * c).index_select(0, rows).reshape(b, r, k * n, c)


@register("token_mixer", "bra", config=BiLevelRoutingAttentionConfig)
class BiLevelRoutingAttention(nn.Module):
    """Region routing by top-k region affinity, then token attention inside the routed regions, plus a depthwise
    conv of V (BiFormer, Zhu et al. 2023). (B, H, W, C) in and out; H and W multiples of ``n_win``."""

    traced_at_built_size = True  # maps must be multiples of n_win (official auto_pad False): fixed_input_size

    def __init__(self, dim: int, *, num_heads: int, n_win: int = 7, topk: int = 4, lepe_kernel_size: int = 5,
                 qkv_bias: bool = True, proj_bias: bool = True, scale: str = "dim") -> None:
        super().__init__()
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.scale = (dim if scale == "dim" else dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel_size, padding=lepe_kernel_size // 2, groups=dim)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_map(x)
        b, height, width = x.shape[0], x.shape[1], x.shape[2]
        c, n, heads = self.dim, self.n_win, self.num_heads
        h, w = height // n, width // n
        qkv = self.qkv(x)  # (B, H, W, 3C)
        lepe = self.lepe(qkv[..., 2 * c:].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # dwconv(V) over the whole map
        tokens = regions(qkv, n)  # (B, R, N, 3C), R = n^2 regions of N = h*w tokens
        q, kv = tokens[..., :c], tokens[..., c:]
        index = route(q, kv[..., :c], self.topk, self.scale)  # (B, R, topk)
        kv = gather_regions(kv, index)  # (B, R, topk*N, 2C)
        # heads: (B*R, heads, tokens, d)
        q = q.reshape(b * n * n, h * w, heads, -1).transpose(1, 2)
        k, v = kv.reshape(b * n * n, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B*R, heads, N, d)
        out = out.transpose(1, 2).reshape(b, n, n, h, w, c).transpose(2, 3).reshape(b, height, width, c)
        return self.proj(out + lepe)

    @torch.jit.unused
    def _check_map(self, x: Tensor) -> None:
        if x.shape[1] % self.n_win or x.shape[2] % self.n_win:
            raise ValueError(f"bi-level routing attention cuts the map into {self.n_win}x{self.n_win} regions: the "
                             f"sides of a {x.shape[1]}x{x.shape[2]} map are not multiples of {self.n_win}")

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, scale={self.scale:.4g}"
