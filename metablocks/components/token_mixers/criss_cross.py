"""Criss-cross attention token mixer: CCNet (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation",
ICCV 2019 / TPAMI 2020).

Each position p = (h, w) attends over its row and column, H + W - 1 distinct positions, with one softmax:

    q, k, v = query_conv(x), key_conv(x), value_conv(x)       # 1x1 convs: C -> C/8, C/8, C
    e_col[p, g] = q[p] . k[g, w]   (g != h: p itself is counted once, in its row)
    e_row[p, u] = q[p] . k[h, u]
    a = softmax([e_col | e_row])                             # (H + W) weights, the masked one exactly 0
    A(x)[p] = sum_g a_col[p, g] v[g, w] + sum_u a_row[p, u] v[h, u]

as the official pure-PyTorch ``CrissCrossAttention`` (unscaled dot products, the duplicate self position in the
column part masked with -inf). The official module returns ``x + gamma * A(x)`` with ``gamma`` initialised to 0,
and RCCA applies it R times with shared weights (R = 2 in CCNet), so one position sees the whole map.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metablocks.fields import Iterations, Width
from metablocks.registry import Component, Context, register


class CrissCrossConfig(Component):
    layout = "channels_first"
    reduction: Width = 8  # query/key channels: dim // reduction
    recurrence: Iterations = 2  # R passes with shared weights (RCCA)
    residual: bool = False  # True: return the official x + updates; False: only the updates (our block adds x)

    def check(self, ctx: Context) -> list[str]:
        if ctx.dim // self.reduction < 1:
            return [f"dim={ctx.dim} is smaller than reduction={self.reduction}: queries and keys would have no channels"]
        return []


@register("token_mixer", "criss_cross", config=CrissCrossConfig)
class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention over each position's row and column (CCNet, Huang et al. 2019).

    Pass r computes ``y_r = y_{r-1} + gamma * A(y_{r-1})`` from ``y_0 = x`` (the official module applied R times).
    ``residual=True`` returns ``y_R``, exactly the official RCCA. ``residual=False`` (the default, for our blocks,
    which add their own shortcut ``x + mixer(norm(x))``) returns ``y_R - x``, summed from the per-pass updates so
    that R = 1 gives exactly ``gamma * A(x)``: the shortcut is not counted twice, and with ``gamma = 0`` at
    initialisation the block starts as the identity, as in CCNet.

    Energies and aggregation are two batched einsums (rows, columns), O(HW(H+W)C) time and O(HW(H+W)) memory.
    ``scaled_dot_product_attention`` is not used: a joint softmax over a row and a column per position needs either
    every position's H+W keys gathered (C times the memory) or a dense HW x HW mask, the cost CCNet avoids.
    """

    def __init__(self, dim: int, *, reduction: int = 8, recurrence: int = 2, residual: bool = False) -> None:
        super().__init__()
        self.recurrence, self.residual = recurrence, residual
        self.query_conv = nn.Conv2d(dim, dim // reduction, 1)
        self.key_conv = nn.Conv2d(dim, dim // reduction, 1)
        self.value_conv = nn.Conv2d(dim, dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention_map(self, x: Tensor) -> Tensor:
        """Attention of one pass over (B, C, H, W): (B, H, W, H + W), column part [..., :H] then row part [..., H:].

        Entry [b, h, w, g] (g < H) weighs position (g, w); entry [b, h, w, H + u] weighs (h, u). The column entry
        g = h is exactly 0 (that position is counted in the row part), so each row of weights covers H + W - 1
        positions and sums to 1.
        """
        q, k = self.query_conv(x), self.key_conv(x)  # (B, C', H, W)
        height = x.shape[-2]
        energy_col = torch.einsum("bchw,bcgw->bhwg", q, k)  # (B, H, W, H): (h, w) against (g, w)
        energy_row = torch.einsum("bchw,bchu->bhwu", q, k)  # (B, H, W, W): (h, w) against (h, u)
        self_in_col = torch.eye(height, dtype=torch.bool, device=x.device)[:, None, :]  # (H, 1, H): g == h
        energy_col = energy_col.masked_fill(self_in_col, float("-inf"))
        return torch.cat([energy_col, energy_row], dim=-1).softmax(dim=-1)  # (B, H, W, H + W)

    def criss_cross(self, x: Tensor) -> Tensor:
        """A(x): one pass of row-and-column aggregation of the values, without gamma or shortcut; (B, C, H, W)."""
        attn_col, attn_row = self.attention_map(x).split([x.shape[-2], x.shape[-1]], dim=-1)
        v = self.value_conv(x)  # (B, C, H, W)
        out_col = torch.einsum("bhwg,bcgw->bchw", attn_col, v)  # sum over the column
        out_row = torch.einsum("bhwu,bchu->bchw", attn_row, v)  # sum over the row
        return out_col + out_row

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        updates = self.gamma * self.criss_cross(x)  # the first pass (no Optional accumulator: TorchScript)
        y = x + updates
        for _ in range(self.recurrence - 1):  # shared weights: RCCA
            step = self.gamma * self.criss_cross(y)
            y = y + step
            updates = updates + step
        return y if self.residual else updates

    def extra_repr(self) -> str:
        return f"recurrence={self.recurrence}, residual={self.residual}"
