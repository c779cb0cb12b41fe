"""(Shifted) window self-attention with a relative position bias (Liu et al., "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows", ICCV 2021)."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Kernel, Probability
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing


class WindowAttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    window_size: Kernel = 7
    shift: bool | Kernel = False  # True: shift by window_size // 2 (Swin's odd blocks); an int: that many tokens
    qkv_bias: bool = True
    proj_bias: bool = True
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0
    mask_value: Annotated[float, Field(ge=-1e4, le=0.0)] = -100.0  # added to scores between tokens that the cyclic shift brought together (Swin: -100)

    def shift_size(self) -> int:
        return self.window_size // 2 if self.shift is True else int(self.shift)

    def window_and_shift(self, resolution: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Window and shift per axis for a map of ``resolution``: an axis no longer than the window gets one
        window the size of the map and no shift (as in the Swin code)."""
        window = tuple(min(r, self.window_size) for r in resolution)
        shift = tuple(0 if r <= self.window_size else self.shift_size() for r in resolution)
        return window, shift  # type: ignore[return-value]

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if self.window_size < 1:
            errors.append(f"window_size must be at least 1, got {self.window_size}")
        if not 0 <= self.shift_size() < self.window_size:
            errors.append(f"the shift ({self.shift_size()}) must be in [0, window_size={self.window_size})")
        errors += self.head_problems(ctx.dim)
        if ctx.resolution is None:
            errors.append("window_attention needs the feature map size (its shift mask is built for it)")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "window_attention needs the feature map size"
        num_heads, head_dim = self.heads(ctx.dim)
        window, shift = self.window_and_shift(ctx.resolution)
        return WindowAttention(ctx.dim, num_heads=num_heads, head_dim=head_dim, window_size=window, shift_size=shift,
                               resolution=ctx.resolution, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
                               attn_drop=self.attn_drop, proj_drop=self.proj_drop, mask_value=self.mask_value)


def relative_position_index(window: tuple[int, int]) -> Tensor:
    """(N, N) index into the (2*wh-1)*(2*ww-1) bias table for every pair of the N = wh*ww tokens of a window."""
    wh, ww = window
    rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # (N,) each, row-major like the tokens of a window
    d_row = rows[:, None] - rows[None, :] + (wh - 1)  # (N, N) in [0, 2*wh-2]
    d_col = cols[:, None] - cols[None, :] + (ww - 1)  # (N, N) in [0, 2*ww-2]
    return d_row * (2 * ww - 1) + d_col


def _regions(size: int, window: int, shift: int) -> Tensor:
    """Per position of a padded axis of ``size``: which of the (up to) three bands it came from before the
    cyclic shift: 0 = untouched, 1 = the last window's remainder, 2 = the ``shift`` positions rolled in."""
    pos = torch.arange(size)
    if shift == 0:
        return torch.zeros(size, dtype=torch.long)
    return (pos >= size - window).long() + (pos >= size - shift).long()


def shift_mask(padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], value: float) -> Tensor:
    """(num_windows, N, N) additive mask: ``value`` between tokens of a window that were not neighbours
    before the cyclic shift, 0 elsewhere. ``padded`` is the (H, W) of the rolled, padded map."""
    region = _regions(padded[0], window[0], shift[0])[:, None] * 3 + _regions(padded[1], window[1], shift[1])[None, :]
    region = _windows(region[None, :, :, None], window[0], window[1])[0, :, :, 0]  # (nW, N)
    differs = region[:, :, None] != region[:, None, :]  # (nW, N, N)
    return torch.zeros(differs.shape).masked_fill(differs, value)


def _windows(x: Tensor, wh: int, ww: int) -> Tensor:
    """(B, nh*wh, nw*ww, C) -> (B, nh*nw, wh*ww, C), einops' "b (nh wh) (nw ww) c -> b (nh nw) (wh ww) c"."""
    return x.unflatten(1, (-1, wh)).unflatten(3, (-1, ww)).permute(0, 1, 3, 2, 4, 5).flatten(3, 4).flatten(1, 2)


def biased_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v. SDPA, unless the bias needs a gradient: SDPA then falls back to its math
    path, whose NaN-safe softmax costs more than these three ops (CPU, 49-token windows: 0.76 vs 0.55 ms)."""
    # traced (torch.fx), the bias is a proxy: grad mode alone decides, as it does for the parameter table in eager
    if not (torch.is_grad_enabled() and ((not torch.jit.is_scripting() and fx_tracing()) or bias.requires_grad)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    # scaled after the product, in the add: scaling q first would keep a scaled copy of q alive for the backward
    scores = torch.add(bias, q @ k.transpose(-2, -1), alpha=q.shape[-1] ** -0.5)
    return F.dropout(scores.softmax(dim=-1), dropout, training=dropout > 0) @ v


@register("token_mixer", "window_attention", config=WindowAttentionConfig)
class WindowAttention(nn.Module):
    """Self-attention inside non-overlapping windows, optionally cyclically shifted, with a learned relative
    position bias per head (Swin Transformer, Liu et al. 2021)."""

    traced_at_built_size = True  # torch.fx bakes the shift mask of the map size it was built for

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, window_size: tuple[int, int],
                 shift_size: tuple[int, int], resolution: tuple[int, int], qkv_bias: bool = True,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 mask_value: float = -100.0) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.mask_value = num_heads, attn_drop, mask_value
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        inner = num_heads * head_dim
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.shifted = any(self.shift_size)
        self._padded = self._padded_size(resolution[0], resolution[1])
        mask = shift_mask(self._padded, self.window_size, self.shift_size, mask_value) if self.shifted else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _padded_size(self, height: int, width: int) -> tuple[int, int]:
        # r + (w - r % w) % w, not -(-r // w) * w: ONNX's integer Div truncates toward zero, so a traced negative
        # floor division rounds the wrong way (16 -> 14 instead of 21 for w = 7)
        wh, ww = self.window_size
        return height + (wh - height % wh) % wh, width + (ww - width % ww) % ww

    def _bias(self, padded: tuple[int, int], device: torch.device) -> Tensor:
        """Relative position bias, (1, heads, N, N); for shifted windows plus the shift mask, (1, nW * heads, N, N).
        4-D, because only a 4-D mask lets SDPA take its fused CPU kernel (a 3-D one falls back to the math path)."""
        n = self.window_size[0] * self.window_size[1]
        table = self.relative_position_bias_table[self.relative_position_index.flatten()]  # (N*N, heads)
        bias = table.unflatten(0, (n, n)).permute(2, 0, 1).reshape(1, -1, n, n)  # (1, heads, N, N)
        mask = self.attn_mask
        if mask is None:
            return bias
        # torch.fx traces for the built map size (padded sizes are proxies there); eager and TorchScript rebuild
        # the mask for any other size
        if (torch.jit.is_scripting() or not fx_tracing()) and padded != self._padded:
            mask = shift_mask(padded, self.window_size, self.shift_size, self.mask_value).to(device)
        return (bias + mask[:, None].to(bias.dtype)).reshape(1, -1, n, n)  # (1, nW * heads, N, N)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        # permutes/reshapes spelled out (einops' patterns in the comments): TorchScript and torch.fx take these
        batch, height, width = x.shape[0], x.shape[1], x.shape[2]
        sh, sw = self.shift_size
        wh, ww = self.window_size
        if self.shifted:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        tracing = not torch.jit.is_scripting() and fx_tracing()  # sizes are proxies: pad and crop unconditionally
        pad_h, pad_w = (wh - height % wh) % wh, (ww - width % ww) % ww
        if tracing or pad_h > 0 or pad_w > 0:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded = (height + pad_h, width + pad_w)
        windows = _windows(x, wh, ww)  # (B, nW, N, C)
        # 4-D attention (what SDPA kernels and the ONNX exporter take): windows fold into the batch, where one
        # (heads, N, N) bias serves them all; shifted windows each have their own mask, so they fold into the heads
        qkv = self.qkv(windows).unflatten(3, (3, self.num_heads, -1)).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, h, N, d)
        qkv = qkv.flatten(2, 3) if self.shifted else qkv.flatten(1, 2)  # "three b (w h) n d" / "three (b w) h n d"
        q, k, v = qkv.unbind(0)
        out = biased_attention(q, k, v, self._bias(padded, x.device), self.attn_drop if self.training else 0.0)
        out = out.unflatten(1, (-1, self.num_heads)) if self.shifted else out.unflatten(0, (batch, -1))  # (B, nW, h, N, d)
        out = self.proj_drop(self.proj(out.permute(0, 1, 3, 2, 4).flatten(3)))  # (B, nW, N, C)
        # "b (nh nw) (wh ww) c -> b (nh wh) (nw ww) c"
        x = out.unflatten(1, (padded[0] // wh, -1)).unflatten(3, (wh, ww)).permute(0, 1, 3, 2, 4, 5).flatten(3, 4)
        x = x.flatten(1, 2)
        if tracing or pad_h > 0 or pad_w > 0:
            x = x[:, :height, :width]
        if self.shifted:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}, shift_size={self.shift_size}"
