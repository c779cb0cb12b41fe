"""A depthwise spatial op in front of a 1x1-conv MLP: FFNet's channel mixer (Yun et al., "FFNet: MetaMixer-based
Efficient Convolutional Mixer Design", 2024)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.token_mixers.ffnified_attention import spatial_problems
from metablocks.fields import Ratio, width_problems
from metablocks.registry import Component, Context, Ref, register


class DWConvMlpConfig(Component):
    layout = "channels_first"
    conv: Annotated[Component, Ref("token_mixer")] = "repvgg_dw"  # FFNet-1: {repvgg_dw, 3, small_kernel: null}
    ratio: Ratio = 3.0
    act: Annotated[Component, Ref("act")] = "gelu"

    def check(self, ctx: Context) -> list[str]:
        return width_problems(self.ratio, ctx.dim) + spatial_problems(self, ("conv",))

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("conv",), self.conv, Context(ctx.dim, resolution=ctx.resolution))]


@register("channel_mixer", "dwconv_mlp", config=DWConvMlpConfig)
class DWConvMlp(nn.Module):
    """fc2(act(fc1(conv(x)))): a depthwise op, then 1x1 convs dim -> ratio * dim -> dim with biases (FFNet's
    Channel_Mixer, Yun et al. 2024; names as in the official code). The block adds the residual."""

    def __init__(self, dim: int, *, conv: Component, ratio: float = 3.0, act: Component) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.conv = conv.build(Context(dim))
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = act.build()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.fc2(self.act(self.fc1(self.conv(x))))
