"""Inception token mixer (iFormer: Si et al., "Inception Transformer", NeurIPS 2022): a channel split into a
high-frequency convolution/max-pool part and a low-frequency pooled self-attention part, fused by a depthwise conv."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Heads, Stride
from metablocks.registry import Component, Context, register
from metablocks.tracing import fx_tracing


class InceptionMixerConfig(Component):
    layout = "channels_first"
    num_heads: Heads  # the stage's heads: head_dim = dim // num_heads (the official ``num_heads``)
    attention_heads: Heads = 1  # heads of the low-frequency attention: C_l = attention_heads * head_dim channels
    pool_size: Stride = 2  # the low-frequency part attends over a pool_size-avg-pooled map (1: the full map)
    qkv_bias: bool = True

    def split(self, dim: int) -> tuple[int, int, int]:
        """(C_h, C_l, head_dim): the high- and low-frequency channels of a ``dim``-wide input."""
        head_dim = dim // self.num_heads
        return dim - self.attention_heads * head_dim, self.attention_heads * head_dim, head_dim

    def check(self, ctx: Context) -> list[str]:
        if ctx.dim % self.num_heads:
            return [f"dim={ctx.dim} is not divisible by num_heads={self.num_heads}"]
        high, _, _ = self.split(ctx.dim)
        errors = []
        if high <= 0 or high % 2:
            errors.append(f"attention_heads={self.attention_heads} of num_heads={self.num_heads} leaves "
                          f"{high} high-frequency channels of dim={ctx.dim}; they must be a positive even number "
                          f"(halved between the max-pool and the conv branch)")
        if self.pool_size > 1 and ctx.resolution and (ctx.resolution[0] % self.pool_size
                                                      or ctx.resolution[1] % self.pool_size):
            errors.append(f"pool_size={self.pool_size} does not divide the {ctx.resolution[0]}x{ctx.resolution[1]} "
                          f"map (the attention's output is upsampled back by pool_size)")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        high, _, _ = self.split(ctx.dim)
        return InceptionMixer(ctx.dim, high=high, heads=self.attention_heads, pool_size=self.pool_size,
                              qkv_bias=self.qkv_bias)


@register("token_mixer", "inception_mixer", config=InceptionMixerConfig)
class InceptionMixer(nn.Module):
    """[X_c, X_p, X_l] = split(x) (C_h/2, C_h/2, C_l channels); Y_c = GELU(DwConv3(FC(X_c))),
    Y_p = GELU(FC(MaxPool3(X_p))), Y_l = Upsample(MSA(AvgPool(X_l))); Y = cat(Y_c, Y_p, Y_l);
    out = FC(Y + DwConv3(Y)) (Si et al. 2022; as the official code, each high branch doubles its width)."""

    def __init__(self, dim: int, *, high: int, heads: int, pool_size: int = 2, qkv_bias: bool = True) -> None:
        super().__init__()
        self.high, self.half, self.heads, self.pool_size = high, high // 2, heads, pool_size
        low, half, mixed = dim - high, high // 2, dim + high  # each high half doubles: 2*high + low = dim + high
        self.conv1 = nn.Conv2d(half, 2 * half, 1, bias=False)  # high-frequency conv branch: 1x1, then dw3x3, GELU
        self.conv_dw = nn.Conv2d(2 * half, 2 * half, 3, padding=1, groups=2 * half, bias=False)
        self.pool_proj = nn.Conv2d(half, 2 * half, 1)  # high-frequency pool branch: max-pool 3x3, then 1x1, GELU
        self.qkv = nn.Linear(low, 3 * low, bias=qkv_bias)  # low-frequency attention (no output projection)
        self.fuse = nn.Conv2d(mixed, mixed, 3, padding=1, groups=mixed, bias=False)
        self.proj = nn.Conv2d(mixed, dim, 1)

    def attend(self, x: Tensor) -> Tensor:
        """Y_l = Upsample(MSA(AvgPool(X_l))) on a (B, C_l, H, W) map."""
        b, c = x.shape[:2]
        if self.pool_size > 1:
            if not torch.jit.is_scripting() and not fx_tracing():
                self._check_divides(x.shape[2], x.shape[3])
            x = F.avg_pool2d(x, self.pool_size)
        hp, wp = x.shape[2], x.shape[3]
        qkv = self.qkv(x.flatten(2).transpose(1, 2)).reshape(b, hp * wp, 3, self.heads, -1)  # (B, N, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        y = y.transpose(2, 3).reshape(b, c, hp, wp)
        return F.interpolate(y, scale_factor=float(self.pool_size), mode="nearest") if self.pool_size > 1 else y

    @torch.jit.unused
    def _check_divides(self, h: int, w: int) -> None:
        if h % self.pool_size or w % self.pool_size:
            raise ValueError(f"inception mixer: pool_size={self.pool_size} does not divide this input's {h}x{w} map (its "
                             f"attention's output is upsampled back by {self.pool_size}); give an input whose map here "
                             f"is a multiple of {self.pool_size}")

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        x_conv, x_pool, x_low = x[:, : self.half], x[:, self.half: self.high], x[:, self.high:]
        y_conv = F.gelu(self.conv_dw(self.conv1(x_conv)))
        y_pool = F.gelu(self.pool_proj(F.max_pool2d(x_pool, 3, stride=1, padding=1)))
        y = torch.cat([y_conv, y_pool, self.attend(x_low)], dim=1)
        return self.proj(y + self.fuse(y))
