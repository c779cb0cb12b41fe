"""ConvFFN channel mixer: 1x1 conv-BN -> GELU -> 1x1 conv-BN (Ding et al., "Scaling Up Your Kernels to 31x31:
Revisiting Large Kernel Design in CNNs", CVPR 2022)."""
from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from metablocks.components.common.reparam import ConvBN
from metablocks.fields import Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class ConvFfnConfig(Component):
    layout = "channels_first"
    ratio: Ratio = 4.0
    act: Annotated[Component, Ref("act")] = "gelu"

    def check(self, ctx: Context) -> list[str]:
        return width_problems(self.ratio, ctx.dim)


@register("channel_mixer", "conv_ffn", config=ConvFfnConfig)
class ConvFFN(nn.Module):
    """pw1 (1x1 conv-BN, dim -> ratio * dim) -> act -> pw2 (1x1 conv-BN); the block adds RepLKNet's pre-BN and residual.

    ``reparameterize()`` folds both BatchNorms into their convs.
    """

    def __init__(self, dim: int, *, ratio: float = 4.0, act: Component) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        self.pw1 = ConvBN(dim, hidden)
        self.act = act.build()
        self.pw2 = ConvBN(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.pw2(self.act(self.pw1(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.pw1.reparameterize()
        self.pw2.reparameterize()
