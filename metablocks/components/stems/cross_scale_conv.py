"""Cross-scale embedding layer (CEL): convolutions of several kernel sizes on one stride-s grid, their outputs
concatenated along channels (Wang et al., "CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale
Attention", ICLR 2022; cheerss/CrossFormer ``PatchEmbed`` and ``PatchMerging``).

    y = [conv_{k_1}(x) | conv_{k_2}(x) | ... | conv_{k_n}(x)],  stride s, padding (k_i - s) / 2

Kernel i of n gets out_dim / 2^(i+1) channels, the last as many as the one before it (the smallest kernel the most:
stem 4, 8, 16, 32 -> D/2, D/4, D/8, D/8; merging 2, 4 -> D/2, D/2 of D = 2C). The stem normalizes its output; the
merging layers normalize their input (``norm_first``). RaftMLP's ``cross_scale_embed`` instead sums the kernels'
projections to one width.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

from metablocks.fields import Kernel, Stride
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


def split_widths(out_dim: int, parts: int) -> list[int]:
    """CrossFormer's split of ``out_dim`` over ``parts`` kernels: halves, the last two equal (8 -> 4, 2, 1, 1)."""
    return [out_dim // 2 ** (i + 1) for i in range(parts - 1)] + [out_dim // 2 ** (parts - 1)]


class CrossScaleConvConfig(Component):
    layout = "channels_first"
    kernels: list[Kernel] = Field([4, 8, 16, 32], min_length=1, max_length=8)  # stem [4, 8, 16, 32]; merging [2, 4]
    stride: Stride | None = None  # None: the first kernel
    norm: Annotated[Component, Ref("norm")] | None = "layernorm"
    norm_first: bool = False  # normalize the input (CrossFormer's merging layers), not the concatenation (its stem)

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.kernels[0]

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return tuple(r // self.step for r in resolution)  # type: ignore[return-value]

    def check(self, ctx: Context) -> list[str]:
        errors, s = [], self.step
        for k in self.kernels:
            if k < s or (k - s) % 2:
                errors.append(f"kernel {k} must be at least the stride {s} with (k - {s}) even, so that its padding "
                              f"(k - {s}) / 2 centres it on the stride-{s} grid")
        widths = split_widths(ctx.out_dim, len(self.kernels)) if ctx.out_dim is not None else []
        if widths and (sum(widths) != ctx.out_dim or min(widths) < 1):
            errors.append(f"out_dim={ctx.out_dim} does not split over {len(self.kernels)} kernels: kernel i gets "
                          f"out_dim / 2^(i+1) channels (the last as many as the one before), so out_dim must be a "
                          f"multiple of {2 ** (len(self.kernels) - 1)}")
        if ctx.resolution and (ctx.resolution[0] % s or ctx.resolution[1] % s):
            errors.append(f"a {ctx.resolution[0]}x{ctx.resolution[1]} map does not divide into {s}x{s} patches: "
                          f"its sides must be multiples of the stride {s}")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        if self.norm is None:
            return []
        if self.norm_first:
            return [(("norm",), self.norm, Context(ctx.dim, resolution=ctx.resolution))]
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return [(("norm",), self.norm, Context(out, resolution=self.out_resolution(ctx.resolution)
                                                if ctx.resolution else None))]

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "an embedding needs the stage's dim"
        norm = build_at(self.norm, ctx.dim if self.norm_first else ctx.out_dim, "channels_first") if self.norm else None
        return self.module(ctx.dim, ctx.out_dim, kernels=self.kernels, stride=self.step, norm=norm,
                           norm_first=self.norm_first)


class CrossScaleConv(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H/s, W/s): the channel concatenation of one strided conv per kernel size."""

    def __init__(self, in_dim: int, out_dim: int, *, kernels: list[int], stride: int, norm: nn.Module | None = None,
                 norm_first: bool = False) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.projs = nn.ModuleList(nn.Conv2d(in_dim, width, k, stride=stride, padding=(k - stride) // 2)
                                   for k, width in zip(kernels, split_widths(out_dim, len(kernels))))
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W)
        if self.norm_first:
            x = self.norm(x)
        outs = []
        for proj in self.projs:  # a loop, not a comprehension over the ModuleList: TorchScript takes it
            outs.append(proj(x))
        x = torch.cat(outs, dim=1)
        return x if self.norm_first else self.norm(x)


@register("stem", "cross_scale_conv", config=CrossScaleConvConfig)
class CrossScaleConvStem(CrossScaleConv):
    """CrossFormer's cross-scale patch embedding: kernels 4, 8, 16, 32 at stride 4, concatenated, then LayerNorm."""


@register("downsample", "cross_scale_conv", config=CrossScaleConvConfig)
class CrossScaleConvDownsample(CrossScaleConv):
    """CrossFormer's cross-scale patch merging: LayerNorm, then kernels 2 and 4 at stride 2, concatenated."""
