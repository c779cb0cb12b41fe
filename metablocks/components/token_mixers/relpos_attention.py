"""Multi-head self-attention with a 2-D relative position bias per head, resized to the map (CoAtNet, Dai et al.,
"CoAtNet: Marrying Convolution and Attention for All Data Sizes", NeurIPS 2021; MOAT, Yang et al., "MOAT: Alternating
Mobile Convolution and Attention Brings Strong Vision Models", ICLR 2023).

    attn(i, j) = softmax_j(q_i . k_j / sqrt(d) + B[h, dy + H - 1, dx + W - 1]),   (dy, dx) = pos(j) - pos(i)

The learned table ``B`` is (heads, 2P - 1, 2P - 1) for ``rel_pos_size`` P whatever the input; for an H x W window it
is resized bilinearly to (2H - 1, 2W - 1) (MOAT: P = 14 at stride 16, 7 at stride 32, the 224-px maps, so at 224 the
table is used as it is and at 256 it is interpolated from 27x27 to 31x31, as the official deeplab2 code does,
model/layers/moat_attention.py). The window is the whole map (global attention, MOAT on ImageNet) or ``window_size``
(MOAT for dense tasks), which must divide the map. ``rel_pos_size: null`` drops the bias (the "no PE" checkpoints).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field, Strict
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.components.token_mixers.window_attention import biased_attention
from metablocks.fields import MAX_IMG_SIZE, Probability
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing

Side = Annotated[int, Strict(), Field(ge=1, le=MAX_IMG_SIZE)]


class RelPosAttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    rel_pos_size: Side | None = 14  # P: a (heads, 2P-1, 2P-1) table, resized to each window; None: no position bias
    window_size: tuple[Side, Side] | None = None  # (h, w) windows; None: global attention over the whole map
    qkv_bias: bool = True
    proj_bias: bool = True
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        errors = self.head_problems(ctx.dim)
        if self.window_size is not None and ctx.resolution is not None and (
                ctx.resolution[0] % self.window_size[0] or ctx.resolution[1] % self.window_size[1]):
            errors.append(f"the {ctx.resolution[0]}x{ctx.resolution[1]} map does not split into "
                          f"{self.window_size[0]}x{self.window_size[1]} windows (give a window_size that divides it, "
                          f"or null for global attention)")
        if self.window_size is None and ctx.resolution is None:
            errors.append("relpos_attention without window_size needs the feature map size (its position bias is "
                          "resized to it)")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        window = self.window_size or ctx.resolution
        assert window is not None, "relpos_attention needs a window_size or the feature map size"
        num_heads, head_dim = self.heads(ctx.dim)
        return RelPosAttention(ctx.dim, num_heads=num_heads, head_dim=head_dim, rel_pos_size=self.rel_pos_size,
                               window=tuple(window), windowed=self.window_size is not None, qkv_bias=self.qkv_bias,
                               proj_bias=self.proj_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop)


def relative_position_index(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(N, N) index into the flattened (2H-1) x (2W-1) table for query i, key j of an H x W window (N = H * W, row
    major): (row_j - row_i + H - 1) * (2W - 1) + (col_j - col_i + W - 1), key minus query as in deeplab2."""
    rows = torch.arange(height, device=device)[:, None].expand(height, width).flatten()
    cols = torch.arange(width, device=device)[None, :].expand(height, width).flatten()
    d_row = rows[None, :] - rows[:, None] + (height - 1)  # (N, N): key row - query row, in [0, 2H-2]
    d_col = cols[None, :] - cols[:, None] + (width - 1)
    return d_row * (2 * width - 1) + d_col


def relative_bias(table: Tensor, height: int, width: int) -> Tensor:
    """(heads, 2H-1, 2W-1) table -> (heads, N, N) bias, ``table.flatten(1)[:, relative_position_index(H, W)]``: the
    keys of query (i, j) read the H x W window of the table at offset (H-1-i, W-1-j), so the bias is the table's
    windows at every offset, offsets reversed (one copy; 3x faster than the gather on CPU)."""
    windows = table.unfold(1, height, 1).unfold(2, width, 1)  # (heads, H, W, H, W): [a, b, x, y] = table[a + x, b + y]
    return windows.flip(1, 2).reshape(table.shape[0], height * width, height * width)


def resized_table(table: Tensor, height: int, width: int, side: int = -1) -> Tensor:
    """The (heads, 2P-1, 2P-1) table at (heads, 2H-1, 2W-1): bilinear, half-pixel centres, no antialiasing
    (TensorFlow's tf.image.resize default); the table itself when the sizes agree. ``side`` (2P-1) is given where
    the table's shape cannot be read (torch.fx)."""
    side = table.shape[-1] if side < 0 else side
    if side == 2 * height - 1 and side == 2 * width - 1:
        return table
    return F.interpolate(table[None], size=(2 * height - 1, 2 * width - 1), mode="bilinear", align_corners=False)[0]


def _windows(x: Tensor, wh: int, ww: int) -> Tensor:
    """(B, nh*wh, nw*ww, C) -> (B*nh*nw, wh*ww, C), einops' "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c"."""
    return x.unflatten(1, (-1, wh)).unflatten(3, (-1, ww)).permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(0, 2)


def _merge(x: Tensor, batch: int, height: int, width: int, wh: int, ww: int) -> Tensor:
    """The inverse of ``_windows``: (B*nh*nw, wh*ww, C) -> (B, nh*wh, nw*ww, C)."""
    x = x.unflatten(0, (batch, height // wh, width // ww)).unflatten(3, (wh, ww))  # (B, nh, nw, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(1, 2)


@register("token_mixer", "relpos_attention", config=RelPosAttentionConfig)
class RelPosAttention(nn.Module):
    """softmax(QK^T / sqrt(d) + B) V over a window (or the whole map), B a per-head 2-D relative position bias resized
    to the window (CoAtNet, Dai et al. 2021; MOAT, Yang et al. 2022)."""

    traced_at_built_size = True  # torch.fx bakes the (resized) bias of the window it was built for

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, rel_pos_size: int | None, window: tuple[int, int],
                 windowed: bool = False, qkv_bias: bool = True, proj_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.windowed = num_heads, attn_drop, windowed
        self.window = (int(window[0]), int(window[1]))  # the built window: the map's size for global attention
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.has_bias = rel_pos_size is not None
        self.side = side = 2 * rel_pos_size - 1 if rel_pos_size is not None else 1
        self.relative_position_embedding = nn.Parameter(torch.empty(num_heads, side, side)) if self.has_bias else None
        if self.relative_position_embedding is not None:
            nn.init.trunc_normal_(self.relative_position_embedding, std=0.02)

    def bias(self, height: int, width: int) -> Tensor:
        """The (1, heads, N, N) position bias of an ``height`` x ``width`` window (4-D: SDPA's fused CPU kernel)."""
        table = self.relative_position_embedding
        assert table is not None
        if not torch.jit.is_scripting() and fx_tracing():  # torch.fx traces at the built window (sizes are proxies)
            height, width = self.window
        return relative_bias(resized_table(table, height, width, self.side), height, width).unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        batch, height, width = x.shape[0], x.shape[1], x.shape[2]
        wh, ww = self.window if self.windowed else (height, width)
        tokens = _windows(x, wh, ww) if self.windowed else x.flatten(1, 2)  # (B', N, C)
        q, k, v = self.qkv(tokens).unflatten(2, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)  # (B', h, N, d)
        dropout = self.attn_drop if self.training else 0.0
        if self.has_bias:
            out = biased_attention(q, k, v, self.bias(wh, ww).to(q.dtype), dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = self.proj_drop(self.proj(out.permute(0, 2, 1, 3).flatten(2)))  # (B', N, C)
        if self.windowed:
            return _merge(out, batch, height, width, wh, ww)
        return out.unflatten(1, (height, width))  # (B, H, W, C)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window={self.window if self.windowed else 'global'}"
