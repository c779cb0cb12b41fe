"""Attention with learned attention biases over relative offsets, 1x1 conv-BN projections and a depthwise conv on the
queries: LeViT's attention (Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
ICCV 2021) in the form LSNet uses in its last stage (Wang et al., "LSNet: See Large, Focus Small", CVPR 2025)."""
from __future__ import annotations

import itertools
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.reparam import ConvBN
from metablocks.fields import Heads, Kernel, Ratio
from metablocks.registry import Component, Context, Ref, register
from metablocks.tracing import fx_tracing


class LeViTAttentionConfig(Component):
    layout = "channels_first"
    fixed_resolution: ClassVar[bool] = True  # one bias per head and (|dy|, |dx|) offset of the H x W grid it is built for
    key_dim: Heads = 16  # query/key width per head
    num_heads: Heads = 8
    attn_ratio: Ratio | None = None  # value width per head = int(attn_ratio * key_dim); None: dim / (key_dim * heads)
    q_kernel: Kernel | None = 3  # depthwise conv-BN on the queries (LSNet); null: none (LeViT)
    act: Annotated[Component, Ref("act")] = "relu"  # before the output projection

    def value_dim(self, dim: int) -> int:
        ratio = self.attn_ratio if self.attn_ratio is not None else dim / (self.key_dim * self.num_heads)
        return int(ratio * self.key_dim)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.resolution is None:
            errors.append("needs the map's resolution to size its attention biases (one per head and offset); "
                          "give the block a resolution=(H, W) or the recipe an img_size")
        if self.value_dim(ctx.dim) < 1:
            errors.append(f"attn_ratio={self.attn_ratio} leaves no value channels per head at dim={ctx.dim}")
        if self.q_kernel is not None and self.q_kernel % 2 == 0:
            errors.append(f"q_kernel must be odd to keep the map size, got {self.q_kernel}")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "attention biases need the map's resolution"
        return LeViTAttention(ctx.dim, resolution=ctx.resolution, key_dim=self.key_dim, num_heads=self.num_heads,
                              value_dim=self.value_dim(ctx.dim), q_kernel=self.q_kernel, act=self.act)


def bias_index(resolution: tuple[int, int]) -> Tensor:
    """(N, N) index of each pair of grid points into the H*W offsets (|dy|, |dx|), numbered |dy| * W + |dx| (the order
    in which LeViT's loop meets them)."""
    points = list(itertools.product(range(resolution[0]), range(resolution[1])))
    return torch.tensor([[abs(a[0] - b[0]) * resolution[1] + abs(a[1] - b[1]) for b in points] for a in points])


@register("token_mixer", "levit_attention", config=LeViTAttentionConfig)
class LeViTAttention(nn.Module):
    """softmax(q^T k / sqrt(d_k) + B[|dy|, |dx|]) v per head, q after a depthwise conv; proj(act(.)) (LeViT, Graham et
    al. 2021; LSNet, Wang et al. 2025). q, k, v are split along the channels of one 1x1 conv-BN (LSNet's order:
    all queries, all keys, all values). The block adds the residual; names follow the official code.
    """

    def __init__(self, dim: int, *, resolution: tuple[int, int], key_dim: int = 16, num_heads: int = 8,
                 value_dim: int = 64, q_kernel: int | None = 3, act: Component) -> None:
        super().__init__()
        self.resolution, self.num_heads, self.key_dim, self.value_dim = tuple(resolution), num_heads, key_dim, value_dim
        qk = key_dim * num_heads
        self.qkv = ConvBN(dim, 2 * qk + value_dim * num_heads)
        self.dw = ConvBN(qk, qk, q_kernel, groups=qk) if q_kernel is not None else nn.Identity()
        self.act = act.build()
        self.proj = ConvBN(value_dim * num_heads, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution[0] * resolution[1]))
        self.register_buffer("attention_bias_idxs", bias_index(self.resolution), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        b, _, h, w = x.shape
        qk = self.key_dim * self.num_heads
        q, k, v = self.qkv(x).split([qk, qk, self.value_dim * self.num_heads], dim=1)
        q = self.dw(q)
        # einops' "b (h d) y x -> b h (y x) d" for each, as views (TorchScript and torch.fx take these)
        q = q.reshape(b, self.num_heads, self.key_dim, h * w).transpose(-2, -1)
        k = k.reshape(b, self.num_heads, self.key_dim, h * w).transpose(-2, -1)
        v = v.reshape(b, self.num_heads, self.value_dim, h * w).transpose(-2, -1)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B, heads, N, d_v)
        out = out.transpose(-2, -1).reshape(b, self.num_heads * self.value_dim, h, w)  # "b h (y x) d -> b (h d) y x"
        return self.proj(self.act(out))

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        if (x.shape[2], x.shape[3]) != self.resolution:
            raise ValueError(f"the attention biases were built for a fixed {self.resolution[0]}x{self.resolution[1]} "
                             f"token grid; got a {x.shape[2]}x{x.shape[3]} map")
