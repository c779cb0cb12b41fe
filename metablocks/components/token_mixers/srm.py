"""Style-based recalibration: a channel gate from each channel's mean and standard deviation over the map (Lee et al.,
"SRM: A Style-based Recalibration Module for Convolutional Neural Networks", ICCV 2019), as PartialNet's PAT_ch uses
it on the channels its partial conv leaves (Huang et al., "Partial Channel Network: Compute Fewer, Perform Better",
2025).

    u = [mean_HW(x) | std_HW(x)]  (B, C, 1, 2)      g = hardsigmoid(BN(cfc(u)))  (B, C, 1, 1)      y = x * g
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Groups
from metablocks.registry import Component, Context, register


class SrmConfig(Component):
    layout = "channels_first"
    groups: Groups = 1  # of the (1, 2) style-integration conv: 1 dense (PartialNet), dim depthwise (SRM's paper)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.dim % self.groups:
            errors.append(f"groups={self.groups} does not divide dim={ctx.dim}")
        if ctx.resolution and ctx.resolution[0] * ctx.resolution[1] < 2:
            errors.append(f"the style's standard deviation needs at least 2 positions; the map is "
                          f"{ctx.resolution[0]}x{ctx.resolution[1]}")
        return errors


@register("token_mixer", "srm", config=SrmConfig)
class SRM(nn.Module):
    """x * hardsigmoid(BN(cfc([mean | std]))): ``cfc`` a (1, 2) conv over the two style statistics, no bias."""

    def __init__(self, dim: int, *, groups: int = 1) -> None:
        super().__init__()
        self.cfc = nn.Conv2d(dim, dim, (1, 2), groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        flat = x.flatten(2)  # (B, C, HW)
        style = torch.stack([flat.mean(-1), flat.std(-1)], dim=-1)[:, :, None, :]  # (B, C, 1, 2); std unbiased
        return x * F.hardsigmoid(self.bn(self.cfc(style)))  # gate (B, C, 1, 1)
