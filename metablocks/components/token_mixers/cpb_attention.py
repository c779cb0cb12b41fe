"""Length-scaled cosine self-attention with a continuous position bias: the last stage of TransNeXt (Shi, "TransNeXt:
Robust Foveal Visual Perception for Vision Transformers", CVPR 2024), as the official ``transnext.Attention``."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.cpb import checked_map, cpb_bias, grid_problems, register_cpb_tables, temperature_init
from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Probability, Width
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing


class CpbAttentionConfig(MultiHeadConfig):
    """Global attention over the H x W tokens. Fixed resolution: the CPB table (every query/key offset of the grid)
    is a non-persistent buffer sized by the map the recipe's img_size gives, and the length scale is log(H W).

    ``cpb_pretrain_size``: the map side the CPB coordinates are scaled by (the official ``pretrain_size`` over the
    stage's stride); None: the map's own.
    """

    layout = "channels_last"
    fixed_resolution: ClassVar[bool] = True
    qkv_bias: bool = True
    cpb_hidden: Width = 512  # the CPB MLP: 2 -> cpb_hidden -> heads
    cpb_pretrain_size: Width | None = None
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        return self.partition_problems(ctx.dim, exact=True) + grid_problems(ctx.resolution, self.cpb_pretrain_size, "cpb_attention")

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "cpb_attention needs the map's resolution"
        num_heads, _ = self.exact_heads(ctx.dim)
        return CpbAttention(ctx.dim, resolution=ctx.resolution, num_heads=num_heads, qkv_bias=self.qkv_bias,
                            cpb_hidden=self.cpb_hidden, cpb_pretrain_size=self.cpb_pretrain_size,
                            attn_drop=self.attn_drop, proj_drop=self.proj_drop)


@register("token_mixer", "cpb_attention", config=CpbAttentionConfig)
class CpbAttention(nn.Module):
    """softmax((q / |q| + query_embedding) . k / |k| * softplus(temperature) * log(N) + cpb) v over all N = H W tokens
    (TransNeXt, Shi 2024), through scaled_dot_product_attention with scale 1 and the bias as its mask. ``cpb`` is an
    MLP on log-spaced relative coordinates (common/cpb.py); parameter names are the official ones."""

    def __init__(self, dim: int, *, resolution: tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 cpb_hidden: int = 512, cpb_pretrain_size: int | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.resolution, self.num_heads, self.head_dim = tuple(resolution), num_heads, dim // num_heads
        self.attn_drop = attn_drop
        self.temperature = nn.Parameter(temperature_init(num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cpb_fc1 = nn.Linear(2, cpb_hidden)
        self.cpb_fc2 = nn.Linear(cpb_hidden, num_heads)
        n = self.resolution[0] * self.resolution[1]
        self.seq_length_scale = math.log(n)
        register_cpb_tables(self, self.resolution, self.resolution, cpb_pretrain_size)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        b, h, w, c = x.shape
        n = h * w
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = (F.normalize(q, dim=-1) + self.query_embedding) * (F.softplus(self.temperature) * self.seq_length_scale)
        table = self.cpb_fc2(self.cpb_fc1(self.relative_coords_table).relu_())  # the CPB MLP, (T, heads)
        bias = cpb_bias(table, self.relative_pos_index, n, n)
        out = F.scaled_dot_product_attention(q, F.normalize(k, dim=-1), v, attn_mask=bias.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0, scale=1.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, h, w, c)))

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        checked_map(self.resolution, x.shape[1], x.shape[2], "cpb_attention's position biases")
