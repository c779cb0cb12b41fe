"""Multi-scale patch embedding: patches of several sizes around the same stride-s grid, concatenated and projected by
one linear layer (Tatsunami & Taki, "RaftMLP: How Much Can Be Done Without Attention and with Less Spatial
Locality?", ACCV 2022; the official ``CrossScaleMLPEmbedding``).

For kernels k_1 = s < k_2 < ...: ``fc([unfold_{k_1}(x) | unfold_{k_2}(x) | ...])`` with stride s and padding
(k - s) / 2, so every kernel gives the same H/s x W/s grid. A linear layer on concatenated unfolds is a sum of
convolutions, one per kernel, whose weights are slices of ``fc.weight`` (in the unfold's (C, kh, kw) order), which is
how it is computed here: no unfolded copy of the input is materialized.
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from metablocks.fields import Kernel
from metablocks.registry import Component, Context, register


class CrossScaleEmbedConfig(Component):
    layout = "channels_first"
    kernels: list[Kernel] = Field([4, 8], min_length=1, max_length=8)  # the first (smallest) is the stride: RaftMLP [4, 8], then [2, 4]

    @property
    def stride(self) -> int:
        return self.kernels[0]

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return tuple(r // self.stride for r in resolution)  # type: ignore[return-value]

    def check(self, ctx: Context) -> list[str]:
        errors = []
        s = self.stride
        if min(self.kernels) != s:
            errors.append(f"the first kernel is the stride and must be the smallest, got kernels {self.kernels}")
        for k in self.kernels:
            if k % s or (k - s) % 2:
                errors.append(f"kernel {k} must be a multiple of the stride {s} with (k - {s}) even, so that its patches "
                              f"centre on the stride-{s} grid")
        if ctx.resolution and (ctx.resolution[0] % s or ctx.resolution[1] % s or min(ctx.resolution) < s):
            errors.append(f"a {ctx.resolution[0]}x{ctx.resolution[1]} map does not divide into {s}x{s} patches")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "an embedding needs the stage's dim"
        return self.module(ctx.dim, ctx.out_dim, kernels=self.kernels)


class CrossScaleEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H/s, W/s): ``fc`` over the concatenated k x k patches of every kernel (RaftMLP)."""

    def __init__(self, in_dim: int, out_dim: int, *, kernels: list[int]) -> None:
        super().__init__()
        self.in_dim, self.kernels, self.stride = in_dim, list(kernels), kernels[0]
        self.fc = nn.Linear(in_dim * sum(k * k for k in kernels), out_dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W)
        out_dim = self.fc.out_features
        weights = self.fc.weight.split([self.in_dim * k * k for k in self.kernels], dim=1)
        y = self.fc.bias[:, None, None]
        for i, k in enumerate(self.kernels):  # indexed, not zipped: under torch.fx ``weights`` is one proxy
            w = weights[i].reshape(out_dim, self.in_dim, k, k)
            y = y + F.conv2d(x, w, stride=self.stride, padding=(k - self.stride) // 2)
        return y  # (B, C_out, H/s, W/s)


@register("stem", "cross_scale_embed", config=CrossScaleEmbedConfig)
class CrossScaleEmbedStem(CrossScaleEmbed):
    """RaftMLP's first multi-scale patch embedding (kernels 4 and 8, stride 4)."""


@register("downsample", "cross_scale_embed", config=CrossScaleEmbedConfig)
class CrossScaleEmbedDownsample(CrossScaleEmbed):
    """RaftMLP's multi-scale patch embedding between stages (kernels 2 and 4, stride 2; the last stage: 2)."""
