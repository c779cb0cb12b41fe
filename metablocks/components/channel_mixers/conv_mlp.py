"""1x1-conv MLP with a norm on its hidden layer before the activation: fc1 -> norm -> act -> drop -> fc2 (timm's
ConvMlp; FasterNet's MLP, Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR
2023)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import Probability, Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class ConvMlpConfig(Component):
    layout = "channels_first"
    ratio: Ratio = 2.0
    norm: Annotated[Component, Ref("norm")] | None = "batchnorm"  # on the hidden layer, before the activation
    act: Annotated[Component, Ref("act")] = "relu"
    bias: bool = False  # of both 1x1 convs (FasterNet: none, a BatchNorm follows fc1)
    drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        return width_problems(self.ratio, ctx.dim)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        hidden = Context(max(int(self.ratio * ctx.dim), 1), resolution=ctx.resolution)
        return [(("norm",), self.norm, hidden)] if self.norm is not None else []


@register("channel_mixer", "conv_mlp", config=ConvMlpConfig)
class ConvMlp(nn.Module):
    """fc1 (1x1 conv, dim -> ratio * dim) -> norm -> act -> drop -> fc2 (1x1 conv) on (B, C, H, W)."""

    def __init__(self, dim: int, *, ratio: float = 2.0, norm: Component | None, act: Component, bias: bool = False,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.norm = norm.build(Context(hidden, layout="channels_first")) if norm is not None else nn.Identity()
        self.act = inplace_act(act)  # after a fresh conv/norm output
        self.drop = nn.Dropout(drop)
        self.dropping = drop > 0.0
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        x = self.act(self.norm(self.fc1(x)))
        return self.fc2(self.drop(x) if self.dropping else x)  # no call for p = 0 (batch 1 is bound by overhead)
