"""GLMix: a local conv branch beside global attention among soft clusters of the map's tokens (Zhu et al., "Revisiting
the Integration of Convolution and Attention for Vision Backbone", NeurIPS 2024).

The token-mixing half of a GLNet block, used as a plain branch ``{path: [token_mixer], kind: plain}``:

    s0 = pool_8x8(x)                                    (S = 64 initial slots, from the step's input; or learned)
    x  = x + cpe(x)                                     (optional 3x3 depthwise conditional position encoding)
    z  = norm(x)
    A  = scale * cos(s0_i, z_n)                         (S x N logits: cosine similarity, learnable scale)
    s  = softmax_n(A) z                                 (grouping: each slot a soft average of the tokens)
    s  = MHA(s, s, s)                                   (global mixing among the slots)
    y  = softmax_i(A)^T s + pw(dw5x5(pw(z)))            (dispatch back to the tokens, plus the local branch)
    x  = x + drop_path(layer_scale(y))

It owns the conditional position encoding, the norm and the residual because the official code pools the initial
slots from the block's input before both; the block grammar has no way to hand a later branch the block's input.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metablocks.blocks import DropPath, LayerScale
from metablocks.components.token_mixers.attention import Attention, MultiHeadConfig
from metablocks.fields import Kernel, Scale
from metablocks.registry import Component, Context, Ref, register

Slots = Annotated[int, Field(strict=True, ge=1, le=4096)]


class GLMixConfig(MultiHeadConfig):
    layout = "channels_first"
    num_slots: Slots = 64  # a square when pooled (an s x s adaptive average pool of the map)
    slot_init: Literal["pool", "param"] = "pool"  # pooled from the input, or learned (glnet_stl_paramslot)
    kernel_size: Kernel | None = 5  # the local branch's depthwise conv (None: no local branch)
    scale: Scale | None = None  # initial scale of the cosine logits (None: dim ** -0.5)
    learnable_scale: bool = True
    cpe: Kernel | None = None  # x + dwconv_k(x) before the norm (GLNet 4G/9G/16G: 3; the Swin-layout models: none)
    norm: Annotated[Component, Ref("norm")] = "layernorm"
    layer_scale: Scale | None = None  # init of a per-channel scale on the mixer's output (glnet_16g: 1e-4)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        num_heads, head_dim = self.heads(ctx.dim)
        if num_heads * head_dim != ctx.dim:
            errors.append(f"dim={ctx.dim} is not {num_heads} heads of {head_dim} channels: the slot attention keeps "
                          f"the width (give a head_dim or num_heads that divides {ctx.dim})")
        if self.slot_init == "pool" and math.isqrt(self.num_slots) ** 2 != self.num_slots:
            errors.append(f"num_slots={self.num_slots} is not a square: pooled slots come from an s x s average pool "
                          f"(e.g. 64 = 8 x 8), or use slot_init: param")
        for name in ("kernel_size", "cpe"):
            k = getattr(self, name)
            if k is not None and k % 2 == 0:
                errors.append(f"{name} must be odd to keep the map size, got {k}")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim, resolution=ctx.resolution, layout="channels_first"))]

    def build(self, ctx: Context) -> nn.Module:
        num_heads, _ = self.heads(ctx.dim)
        return GLMix(ctx.dim, num_heads=num_heads, num_slots=self.num_slots, slot_init=self.slot_init,
                     kernel_size=self.kernel_size, scale=self.scale, learnable_scale=self.learnable_scale,
                     cpe=self.cpe, norm=self.norm, layer_scale=self.layer_scale, drop_path=ctx.drop_path)


def cluster_logits(slots: Tensor, tokens: Tensor, scale: Tensor) -> Tensor:
    """scale * cos(slot_i, token_n): (B or 1, S, C), (B, N, C) -> (B, S, N)."""
    return F.normalize(slots, p=2.0, dim=-1) @ (scale * F.normalize(tokens, p=2.0, dim=-1)).transpose(-1, -2)


def group(logits: Tensor, tokens: Tensor) -> Tensor:
    """Each slot a softmax-over-tokens weighted average of the tokens: (B, S, N), (B, N, C) -> (B, S, C)."""
    return torch.softmax(logits, dim=-1) @ tokens


def dispatch(logits: Tensor, slots: Tensor) -> Tensor:
    """Each token a softmax-over-slots weighted average of the slots: (B, S, N), (B, S, C) -> (B, N, C)."""
    return torch.softmax(logits.transpose(-1, -2), dim=-1) @ slots


@register("token_mixer", "glmix", config=GLMixConfig)
class GLMix(nn.Module):
    """x + cpe(x), then + drop_path(layer_scale(dispatch(MHA(group(norm(x)))) + local(norm(x)))) (Zhu et al. 2024)."""

    def __init__(self, dim: int, *, num_heads: int, num_slots: int = 64, slot_init: str = "pool",
                 kernel_size: int | None = 5, scale: float | None = None, learnable_scale: bool = True,
                 cpe: int | None = None, norm: Component, layer_scale: float | None = None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, cpe, padding=cpe // 2, groups=dim) if cpe else None
        self.norm = norm.build(Context(dim, layout="channels_first"))
        init = torch.tensor(float(scale if scale is not None else dim ** -0.5))
        if learnable_scale:
            self.slot_scale = nn.Parameter(init)
        else:
            self.register_buffer("slot_scale", init)
        self.pool_size = math.isqrt(num_slots)
        self.init_slots = nn.Parameter(torch.randn(1, num_slots, dim) * 0.02) if slot_init == "param" else None
        self.attn = Attention(dim, num_heads=num_heads, head_dim=dim // num_heads, qkv_bias=True, proj_bias=True)
        self.local = nn.Sequential(nn.Conv2d(dim, dim, 1),  # pseudo qkv
                                   nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim),
                                   nn.Conv2d(dim, dim, 1)) if kernel_size else None  # pseudo projection
        self.layer_scale = LayerScale(dim, layer_scale, channels_last=False) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if self.init_slots is not None:
            slots = self.init_slots  # (1, S, C)
        else:  # from the input, before the position encoding and the norm (as the official code)
            slots = F.adaptive_avg_pool2d(x, self.pool_size).flatten(2).transpose(1, 2)  # (B, S, C)
        if self.cpe is not None:
            x = x + self.cpe(x)
        z = self.norm(x)
        tokens = z.flatten(2).transpose(1, 2)  # (B, N, C)
        logits = cluster_logits(slots, tokens, self.slot_scale)  # (B, S, N)
        mixed = self.attn(group(logits, tokens).unsqueeze(1)).squeeze(1)  # attention among the S slots
        y = dispatch(logits, mixed).transpose(1, 2).reshape(z.shape)  # (B, C, H, W)
        if self.local is not None:
            y = y + self.local(z)
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        if self.drop_path is not None:
            y = self.drop_path(y)
        return x + y
