"""Frozen random token mixing: RandFormer (Yu et al., "MetaFormer Baselines for Vision", 2022)."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from metablocks.registry import Component, Context, register
from metablocks.tracing import fx_tracing


class RandomMixingConfig(Component):
    layout = "channels_last"
    fixed_resolution: ClassVar[bool] = True  # the N x N matrix is tied to the token grid

    def check(self, ctx: Context) -> list[str]:
        if ctx.resolution is None:
            return ["needs the map's resolution to size its N x N mixing matrix (N = H*W); "
                    "give the block a resolution=(H, W) or the recipe an img_size"]
        return []

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "random mixing needs the map's resolution"
        return RandomMixing(ctx.dim, resolution=ctx.resolution)


@register("token_mixer", "random", config=RandomMixingConfig)
class RandomMixing(nn.Module):
    """y[m] = sum_n R[m, n] x[n] over the H*W tokens with a frozen R = softmax(U(0, 1)) (RandFormer, Yu et al. 2022).

    ``random_matrix`` is an nn.Parameter with requires_grad=False, as in the official code, so it is
    saved in the state_dict and counted among the parameters (the paper's "+0.2M" for RandFormer-S12).
    """

    def __init__(self, dim: int, *, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        num_tokens = resolution[0] * resolution[1]
        self.random_matrix = nn.Parameter(torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        tokens = x.flatten(1, 2)  # (B, N, C), einops' "b h w c -> b (h w) c" (TorchScript and torch.fx take it)
        mixed = torch.matmul(self.random_matrix, tokens)  # (N, N) @ (B, N, C) -> (B, N, C)
        return mixed.reshape(x.shape)  # (B, H, W, C)

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        if (x.shape[1], x.shape[2]) != self.resolution:
            raise ValueError(f"random mixing was built for a fixed {self.resolution[0]}x{self.resolution[1]} token grid; "
                             f"got a {x.shape[1]}x{x.shape[2]} map")

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, num_tokens={self.random_matrix.shape[0]}"
