"""1x1-conv MLP with a residual depthwise conv on its hidden layer: fc1 -> h + dw3x3(h) -> act -> fc2 (GLNet's MLP,
Zhu et al., "Revisiting the Integration of Convolution and Attention for Vision Backbone", NeurIPS 2024)."""
from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import Kernel, Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class MlpDWConfig(Component):
    layout = "channels_first"
    ratio: Ratio = 3.0
    kernel_size: Kernel = 3  # of the depthwise conv on the hidden layer
    act: Annotated[Component, Ref("act")] = "gelu"

    def check(self, ctx: Context) -> list[str]:
        errors = width_problems(self.ratio, ctx.dim)
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {self.kernel_size}")
        return errors


@register("channel_mixer", "mlp_dw", config=MlpDWConfig)
class MlpDW(nn.Module):
    """fc2(act(h + dw(h))), h = fc1(x): 1x1 convs dim -> ratio * dim -> dim and a depthwise k x k conv, all with biases."""

    def __init__(self, dim: int, *, ratio: float = 3.0, kernel_size: int = 3, act: Component) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.act = inplace_act(act)  # on the fresh sum
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        h = self.fc1(x)
        return self.fc2(self.act(h + self.dw(h)))
