"""Squeeze-and-excitation as a block step: x * sigmoid(fc2(act(fc1(mean_HW x)))) (Hu et al., "Squeeze-and-Excitation
Networks", CVPR 2018), timm's ``SqueezeExcite``/``SEModule`` (names fc1/fc2, hidden width rounded to a divisor)."""
from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from metablocks.fields import Ratio, Width
from metablocks.registry import Component, Context, Ref, register


def se_width(dim: int, ratio: float, divisor: int) -> int:
    """timm's ``make_divisible(dim * ratio, divisor, round_limit=0.)``: the nearest multiple of ``divisor``, at least one."""
    return max(divisor, int(dim * ratio + divisor / 2) // divisor * divisor)


class SqueezeExciteConfig(Component):
    layout = "channels_first"
    ratio: Ratio = 0.25  # hidden width = dim * ratio, rounded to a multiple of ``divisor`` (FFNet, LSNet: 0.25)
    divisor: Width = 8
    act: Annotated[Component, Ref("act")] = "relu"


@register("channel_mixer", "squeeze_excite", config=SqueezeExciteConfig)
class SqueezeExcite(nn.Module):
    """A per-channel gate from the global mean (SENet, Hu et al. 2018). Not a residual: a block uses it as a plain
    step (``{path: [se], kind: plain}``), as FFNet and LSNet do between their token and channel mixers."""

    def __init__(self, dim: int, *, ratio: float = 0.25, divisor: int = 8, act: Component) -> None:
        super().__init__()
        hidden = se_width(dim, ratio, divisor)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = act.build()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        gate = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))  # (B, C, 1, 1)
        return x * gate
