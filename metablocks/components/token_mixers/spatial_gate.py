"""Spatial gate: each position scaled by a gate computed from its channels, x * hardsigmoid(conv1x1(x) -> 1 map)
(PartialNet's partial spatial attention, PAT_sp, Huang et al., "Partial Channel Network: Compute Fewer, Perform
Better", 2025)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.registry import Component, register


class SpatialGateConfig(Component):
    layout = "channels_first"
    bias: bool = False  # of the 1x1 conv to the single gate map


@register("token_mixer", "spatial_gate", config=SpatialGateConfig)
class SpatialGate(nn.Module):
    """y = x * hardsigmoid(conv(x)), ``conv`` a 1x1 conv dim -> 1: one (B, 1, H, W) gate shared by every channel."""

    def __init__(self, dim: int, *, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, 1, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return x * F.hardsigmoid(self.conv(x))
