"""Two-layer MLP channel mixer: fc1 -> act -> drop -> fc2 -> drop (Vaswani et al., 2017; Dosovitskiy et al., 2021)."""
from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import Probability, Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class MlpConfig(Component):
    tokens = "apply"  # per token (Linear layers): prefix tokens go through it as the map's do
    ratio: Ratio = 4.0
    act: Annotated[Component, Ref("act")] = "gelu"
    bias: bool = True
    drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        return width_problems(self.ratio, ctx.dim)


@register("channel_mixer", "mlp", config=MlpConfig)
class Mlp(nn.Module):
    """Pointwise MLP; 1x1 convolutions channels-first, linear layers channels-last (same weights up to a reshape)."""

    def __init__(self, dim: int, *, ratio: float = 4.0, act: Component, bias: bool = True, drop: float = 0.0,
                 channels_last: bool = True) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        pointwise = nn.Linear if channels_last else lambda i, o, bias: nn.Conv2d(i, o, 1, bias=bias)
        self.fc1 = pointwise(dim, hidden, bias=bias)
        self.act = inplace_act(act)  # on fc1's fresh output (ReLU: no extra map; timm's ConvMlp does the same)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = pointwise(hidden, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
