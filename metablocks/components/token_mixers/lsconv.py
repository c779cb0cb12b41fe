"""LS (large-small) convolution: large-kernel perception predicts per-pixel small kernels, small-kernel aggregation
applies them (Wang et al., "LSNet: See Large, Focus Small", CVPR 2025).

The official code runs the aggregation (SKA) as a Triton kernel; ``ska`` here is its pure-PyTorch form (unfold), equal
to a direct loop over the kernel's taps (tests/test_zoo_lsnet.py). The Triton kernel itself is not compared here.
"""
from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.reparam import ConvBN
from metablocks.fields import Kernel, Width
from metablocks.registry import Component, Context, Ref, register


def ska(x: Tensor, weight: Tensor, kernel_size: int) -> Tensor:
    """Small-kernel aggregation: a per-pixel depthwise k x k conv whose kernels are shared by every ``G``-th channel.

        out[b, c, i, j] = sum_{u, v} x[b, c, i + u - p, j + v - p] * weight[b, c mod G, u * k + v, i, j]   (zero padding)

    x: (B, C, H, W); weight: (B, G, k*k, H, W) with G dividing C. Channel c uses kernel group c mod G, as the Triton
    kernel indexes it (``ci % wc``), so the channels sharing a kernel are c, c + G, c + 2G, ...
    """
    b, c, h, w = x.shape
    groups, taps = weight.shape[1], weight.shape[2]
    patches = F.unfold(x, kernel_size, padding=(kernel_size - 1) // 2)  # (B, C * k*k, H*W), channel-major
    # einops' "b (r g t) (h w) -> b r g t h w" (c = r * G + g), as a view (TorchScript and torch.fx take these)
    patches = patches.view(b, c // groups, groups, taps, h, w)
    return (patches * weight.unsqueeze(1)).sum(3).view(b, c, h, w)  # sum over the k*k taps


class LSConvConfig(Component):
    layout = "channels_first"
    large_kernel: Kernel = 7  # the depthwise perception kernel
    small_kernel: Kernel = 3  # the predicted aggregation kernel
    group_channels: Width = 8  # channels sharing one predicted kernel (dim / group_channels kernels per pixel)
    act: Annotated[Component, Ref("act")] = "relu"

    def check(self, ctx: Context) -> list[str]:
        errors = [f"{name} must be odd to keep the map size, got {k}" for name, k in
                  (("large_kernel", self.large_kernel), ("small_kernel", self.small_kernel)) if k % 2 == 0]
        if ctx.dim % 2:
            errors.append(f"the perception branch works on dim / 2 channels: dim must be even, got {ctx.dim}")
        if ctx.dim % self.group_channels:
            errors.append(f"group_channels={self.group_channels} must divide dim={ctx.dim}: each kernel is shared by "
                          f"group_channels channels")
        return errors


class LKP(nn.Module):
    """Large-kernel perception: 1x1 -> act -> dw large x large -> 1x1 -> act -> 1x1 to G*k*k kernels -> GroupNorm(G)."""

    def __init__(self, dim: int, *, large_kernel: int, small_kernel: int, group_channels: int, act: Component) -> None:
        super().__init__()
        half, self.groups, self.taps = dim // 2, dim // group_channels, small_kernel ** 2
        self.cv1 = ConvBN(dim, half)
        self.act = act.build()
        self.cv2 = ConvBN(half, half, large_kernel, groups=half)
        self.cv3 = ConvBN(half, half)
        self.kernel_size = small_kernel
        self.cv4 = nn.Conv2d(half, self.taps * self.groups, 1)
        self.norm = nn.GroupNorm(self.groups, self.taps * self.groups)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, G, k*k, H, W)
        x = self.act(self.cv3(self.cv2(self.act(self.cv1(x)))))
        weight = self.norm(self.cv4(x))  # (B, G * k*k, H, W)
        return weight.view(weight.shape[0], self.groups, self.taps, weight.shape[2], weight.shape[3])


@register("token_mixer", "lsconv", config=LSConvConfig)
class LSConv(nn.Module):
    """bn(ska(x, lkp(x))): per-pixel small kernels predicted from a large receptive field (LSNet, Wang et al. 2025).

    The official LSConv adds its input after the BN; here the block's residual branch does (``[token_mixer]``).
    """

    def __init__(self, dim: int, *, large_kernel: int = 7, small_kernel: int = 3, group_channels: int = 8,
                 act: Component) -> None:
        super().__init__()
        self.lkp = LKP(dim, large_kernel=large_kernel, small_kernel=small_kernel, group_channels=group_channels,
                       act=act)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.bn(ska(x, self.lkp(x), self.lkp.kernel_size))
