"""Dense k x k convolution as a mixer: a full (or grouped) conv that keeps the width, e.g. the 3x3 conv on a quarter
of the channels in FasterNet's partial convolution (Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster
Neural Networks", CVPR 2023) or a 1x1 projection inside a composite (PartialNet, Huang et al. 2025)."""
from __future__ import annotations

from torch import nn

from metablocks.fields import Dilation, Groups, Kernel
from metablocks.registry import Component, Context, register


class ConvConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 3
    groups: Groups = 1  # 1: a dense conv; dim: depthwise (the ``dwconv`` mixer)
    dilation: Dilation = 1
    bias: bool = False

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {self.kernel_size}")
        if ctx.dim % self.groups:
            errors.append(f"groups={self.groups} does not divide dim={ctx.dim}")
        return errors


@register("channel_mixer", "conv", config=ConvConfig)
@register("token_mixer", "conv", config=ConvConfig)
class Conv(nn.Conv2d):
    """k x k conv, dim -> dim, 'same' padding; its weight is the module's own (``<slot>.weight``)."""

    def __init__(self, dim: int, *, kernel_size: int = 3, groups: int = 1, dilation: int = 1, bias: bool = False) -> None:
        super().__init__(dim, dim, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, groups=groups,
                         bias=bias)
