"""Inception depthwise convolution token mixer (Yu et al., "InceptionNeXt: When Inception Meets ConvNeXt", CVPR 2024)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metablocks.fields import Kernel, Ratio
from metablocks.registry import Component, Context, register


class InceptionDWConvConfig(Component):
    layout = "channels_first"
    square_kernel_size: Kernel = 3
    band_kernel_size: Kernel = 11
    branch_ratio: Ratio = 0.125  # share of the channels each of the three conv branches gets

    def branch_dim(self, dim: int) -> int:
        """Channels of each conv branch (square, 1xk, kx1); the rest pass through untouched."""
        return int(dim * self.branch_ratio)

    def check(self, ctx: Context) -> list[str]:
        errors = [f"{name} must be odd to keep the map size, got {k}"
                  for name, k in (("square_kernel_size", self.square_kernel_size),
                                  ("band_kernel_size", self.band_kernel_size)) if k % 2 == 0]
        branch = self.branch_dim(ctx.dim)
        if branch < 1:
            errors.append(f"branch_ratio={self.branch_ratio} leaves no channel for a conv branch at dim={ctx.dim}")
        elif 3 * branch > ctx.dim:
            errors.append(f"branch_ratio={self.branch_ratio} asks for 3 x {branch} conv channels, more than dim={ctx.dim}")
        return errors


@register("token_mixer", "inception_dwconv", config=InceptionDWConvConfig)
class InceptionDWConv(nn.Module):
    """Split channels into identity | kxk depthwise | 1xk band | kx1 band, mix each, concatenate (InceptionNeXt, Yu et al. 2024)."""

    def __init__(self, dim: int, *, square_kernel_size: int = 3, band_kernel_size: int = 11,
                 branch_ratio: Ratio = 0.125) -> None:
        super().__init__()
        branch = int(dim * branch_ratio)
        square, band = square_kernel_size, band_kernel_size
        self.dwconv_hw = nn.Conv2d(branch, branch, square, padding=square // 2, groups=branch)
        self.dwconv_w = nn.Conv2d(branch, branch, (1, band), padding=(0, band // 2), groups=branch)
        self.dwconv_h = nn.Conv2d(branch, branch, (band, 1), padding=(band // 2, 0), groups=branch)
        self.split_sizes = (dim - 3 * branch, branch, branch, branch)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        identity, square, wide, tall = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((identity, self.dwconv_hw(square), self.dwconv_w(wide), self.dwconv_h(tall)), dim=1)

    def extra_repr(self) -> str:
        return f"split_sizes={self.split_sizes}"
