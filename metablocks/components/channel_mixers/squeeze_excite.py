"""Squeeze-and-excitation channel gate (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

As a component (channel_mixer ``squeeze_excite``) it is the gate step of a block, ``x * sigmoid(up(act(down(mean x))))``:
FFNet and LSNet run it as a plain branch between the two residuals (``{path: [se], kind: plain}``). ``gate:
hard_sigmoid`` is MobileNetV3's and GhostNet's gate, relu6(x + 3) / 6 (Howard et al., "Searching for MobileNetV3", 2019).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Ratio, Width
from metablocks.registry import Component, Context, Ref, register


Gate = Literal["sigmoid", "hard_sigmoid"]


class SqueezeExciteConfig(Component):
    layout = "channels_first"
    omit_when_default = frozenset({"gate"})  # added later: recipes without it keep their model_id
    ratio: Ratio = 0.25  # hidden = ratio * dim
    round_to: Width | None = None  # hidden rounded as timm's make_divisible (None: int(ratio * dim))
    act: Annotated[Component, Ref("act")] = "relu"
    gate: Gate = "sigmoid"

    def hidden(self, dim: int) -> int:
        from metablocks.blocks import make_divisible

        return make_divisible(dim * self.ratio, self.round_to) if self.round_to else int(dim * self.ratio)

    def check(self, ctx: Context) -> list[str]:
        return [] if self.hidden(ctx.dim) >= 1 else [f"ratio={self.ratio} leaves no hidden channels at dim={ctx.dim}"]

    def build(self, ctx: Context) -> nn.Module:
        return SqueezeExcite(ctx.dim, self.hidden(ctx.dim), act=self.act.build(), gate=self.gate)


@register("channel_mixer", "squeeze_excite", config=SqueezeExciteConfig)
class SqueezeExcite(nn.Module):
    """x * sigmoid(up(relu(down(mean_HW x)))) on (B, C, H, W); ``down``/``up`` are biased 1x1 convs (SENet, Hu et al. 2018).
    ``gate="hard_sigmoid"``: relu6(x + 3) / 6 in place of the sigmoid (MobileNetV3, GhostNet)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module | None = None, gate: Gate = "sigmoid") -> None:
        super().__init__()
        self.down = nn.Conv2d(dim, hidden, 1)
        self.act = act
        self.up = nn.Conv2d(hidden, dim, 1)
        self.hard_gate = gate == "hard_sigmoid"

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        squeezed = self.down(x.mean((2, 3), keepdim=True))
        logits = self.up(self.act(squeezed) if self.act is not None else F.relu(squeezed))
        gate = F.hardsigmoid(logits) if self.hard_gate else torch.sigmoid(logits)  # (B, C, 1, 1)
        return x * gate
