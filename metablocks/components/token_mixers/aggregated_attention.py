"""Aggregated (pixel-focused) attention: TransNeXt (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision
Transformers", CVPR 2024), as the official pure-PyTorch ``attention_native.AggregatedAttention``."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.cpb import (checked_map, cpb_bias, grid_problems, on_default_device,
                                            register_cpb_tables, temperature_init)
from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Kernel, Probability, Stride, Width
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing


class AggregatedAttentionConfig(MultiHeadConfig):
    """One softmax over each query's window_size x window_size neighbours and the (H/sr_ratio) x (W/sr_ratio) pooled
    keys. Fixed resolution: the padding mask, the per-pixel length scale and the CPB tables are non-persistent
    buffers sized by the map the recipe's img_size gives.

    ``cpb_pretrain_size``: the map side the CPB coordinates are scaled by (the official ``pretrain_size`` over the
    stage's stride; 56/28/14/7 for stages 1-4 of a 224-pretrained model fine-tuned at 384); None: the map's own.
    """

    layout = "channels_last"
    fixed_resolution: ClassVar[bool] = True
    window_size: Kernel = 3  # odd: the local window is centred on the query
    sr_ratio: Stride = 8  # pooled keys: AdaptiveAvgPool to (H // sr_ratio, W // sr_ratio)
    qkv_bias: bool = True
    cpb_hidden: Width = 512  # the CPB MLP: 2 -> cpb_hidden -> heads
    cpb_pretrain_size: Width | None = None
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        errors = self.partition_problems(ctx.dim, exact=True)
        if self.window_size % 2 == 0:
            errors.append(f"window_size must be odd (the window is centred on its query), got {self.window_size}")
        errors += grid_problems(ctx.resolution, self.cpb_pretrain_size, "aggregated_attention")
        if ctx.resolution is not None and min(ctx.resolution) < self.sr_ratio:
            errors.append(f"sr_ratio={self.sr_ratio} pools the {ctx.resolution[0]}x{ctx.resolution[1]} map to "
                          f"{ctx.resolution[0] // self.sr_ratio}x{ctx.resolution[1] // self.sr_ratio} keys: the map "
                          f"needs sides of at least {self.sr_ratio}")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "aggregated_attention needs the map's resolution"
        num_heads, _ = self.exact_heads(ctx.dim)
        return AggregatedAttention(ctx.dim, resolution=ctx.resolution, num_heads=num_heads,
                                   window_size=self.window_size, sr_ratio=self.sr_ratio, qkv_bias=self.qkv_bias,
                                   cpb_hidden=self.cpb_hidden, cpb_pretrain_size=self.cpb_pretrain_size,
                                   attn_drop=self.attn_drop, proj_drop=self.proj_drop)


@torch.no_grad()
def window_mask(resolution: tuple[int, int], window_size: int) -> tuple[Tensor, Tensor]:
    """(count (N,), outside (N, window_size**2)): how many of each pixel's window neighbours lie inside the map, and
    which lie outside it (masked out of the softmax), neighbours in row-major window order (the official unfold's)."""
    ones = torch.ones(1, 1, *resolution, device="cpu")
    inside = on_default_device(F.unfold(ones, window_size, padding=window_size // 2)[0].T)  # (N, window**2)
    return inside.sum(-1), inside == 0


def neighbours(x: Tensor, window_size: int) -> list[Tensor]:
    """The window_size**2 shifted copies of a (B, H, W, heads, d) map, zero outside it: entry l is, at each pixel, its
    neighbour l in row-major window order (the order of F.unfold). Nine shifted views beat unfold's 9x copy and its
    batched (1 x d) @ (d x 9) products (2.6 against 37 ms for a (1, 56, 56, 2, 24) map on one thread)."""
    r = window_size // 2
    h, w = x.shape[1], x.shape[2]
    padded = F.pad(x, [0, 0, 0, 0, r, r, r, r])
    return [padded[:, l // window_size:l // window_size + h, l % window_size:l % window_size + w]
            for l in range(window_size * window_size)]  # one generator: TorchScript takes no nested ones


@register("token_mixer", "aggregated_attention", config=AggregatedAttentionConfig)
class AggregatedAttention(nn.Module):
    """Pixel-focused attention (TransNeXt, Shi 2024): each query attends, in ONE softmax, to its 3x3 neighbours'
    keys and to keys of the average-pooled map (1x1 conv -> GELU -> AdaptiveAvgPool -> LayerNorm; one kv projection
    for both), with L2-normalised queries and keys, a learnable query embedding and a length-scaled temperature:

        q' = (q / |q| + query_embedding) * softplus(temperature) * log(n_local + n_pool)
        a = softmax([q' . k_local / |k_local| + rpb_local  (outside the map: -inf),  q' . k_pool / |k_pool| + cpb])
        out = proj(sum_local (a_local + q / |q| . learnable_tokens + learnable_bias) v_local + sum_pool a_pool v_pool)

    ``cpb`` is an MLP on log-spaced relative coordinates of the query and the pooled cell (common/cpb.py);
    parameter names are the official ones.
    """

    def __init__(self, dim: int, *, resolution: tuple[int, int], num_heads: int, window_size: int = 3,
                 sr_ratio: int = 8, qkv_bias: bool = True, cpb_hidden: int = 512, cpb_pretrain_size: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.resolution, self.num_heads, self.head_dim = tuple(resolution), num_heads, dim // num_heads
        self.window_size, self.local_len = window_size, window_size ** 2
        self.pool_size = (resolution[0] // sr_ratio, resolution[1] // sr_ratio)
        self.pool_len = self.pool_size[0] * self.pool_size[1]
        self.attn_drop = attn_drop

        self.temperature = nn.Parameter(temperature_init(num_heads))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # the pooled map: 1x1 conv -> GELU -> adaptive average pool -> LayerNorm (eps 1e-5, as the official)
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.sr = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.cpb_fc1 = nn.Linear(2, cpb_hidden)
        self.cpb_fc2 = nn.Linear(cpb_hidden, num_heads)
        self.relative_pos_bias_local = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.local_len), std=0.0004))
        self.learnable_tokens = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.head_dim, self.local_len), std=0.02))
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, self.local_len))

        count, outside = window_mask(self.resolution, window_size)
        self.register_buffer("seq_length_scale", torch.log(count + self.pool_len)[:, None, None], persistent=False)
        self.register_buffer("padding_mask", outside[:, None, :], persistent=False)  # (N, 1, window**2)
        register_cpb_tables(self, self.resolution, self.pool_size, cpb_pretrain_size)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        b, h, w, c = x.shape
        n, heads, d = h * w, self.num_heads, self.head_dim
        # queries, (B, N, heads, d): unit length, + embedding, x softplus(temperature) x log(length) (per pixel)
        q = F.normalize(self.q(x).reshape(b, n, heads, d), dim=-1)
        scale = F.softplus(self.temperature).reshape(1, heads, 1) * self.seq_length_scale  # (N, heads, 1)
        q_scaled = (q + self.query_embedding.reshape(heads, d)) * scale

        # local keys/values: each pixel's window neighbours (zero outside the map)
        k, v = self.kv(x).reshape(b, h, w, 2, heads, d).unbind(3)
        k_local = neighbours(F.normalize(k, dim=-1), self.window_size)
        v_local = neighbours(v, self.window_size)
        attn_local = torch.stack([(q_scaled * kl.reshape(b, n, heads, d)).sum(-1) for kl in k_local], dim=-1)
        attn_local = (attn_local + self.relative_pos_bias_local).masked_fill(self.padding_mask, float("-inf"))

        # pooled keys/values from GELU(1x1 conv) of the map, average-pooled, normalized; the same kv projection
        # the 1x1 conv as a Linear on the channels-last map (PyTorch's 1-thread CPU conv of a permuted view is slow)
        reduced = self.act(F.linear(x, self.sr.weight.flatten(1), self.sr.bias))
        pooled = self.pool(reduced.permute(0, 3, 1, 2))  # (B, C, h', w')
        pooled = self.norm(pooled.flatten(2).transpose(1, 2))  # (B, P, C)
        k_pool, v_pool = self.kv(pooled).reshape(b, self.pool_len, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        table = self.cpb_fc2(self.cpb_fc1(self.relative_coords_table).relu_())  # CPB MLP (in-place ReLU: official)
        pool_bias = cpb_bias(table, self.relative_pos_index, n, self.pool_len)  # (heads, N, P)
        q_heads = q_scaled.transpose(1, 2)  # (B, heads, N, d)
        attn_pool = q_heads @ F.normalize(k_pool, dim=-1).transpose(-2, -1) + pool_bias

        # one softmax over both; the local weights also get the learnable tokens' query-dependent term
        attn = torch.cat([attn_local.transpose(1, 2), attn_pool], dim=-1).softmax(dim=-1)
        attn = F.dropout(attn, self.attn_drop, self.training)
        attn_local, attn_pool = attn.split([self.local_len, self.pool_len], dim=-1)
        weights = attn_local + q.transpose(1, 2) @ self.learnable_tokens + self.learnable_bias  # (B, heads, N, local)
        weights = weights.transpose(1, 2).unsqueeze(-1)  # (B, N, heads, local, 1)
        out = (attn_pool @ v_pool).transpose(1, 2)  # (B, N, heads, d)
        for l, vl in enumerate(v_local):
            out = out + weights[:, :, :, l] * vl.reshape(b, n, heads, d)
        return self.proj_drop(self.proj(out.reshape(b, h, w, c)))

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        checked_map(self.resolution, x.shape[1], x.shape[2], "aggregated_attention's masks and position biases")
