"""FFNified attention: self-attention's query-key-value framework with FFN-like operators, a 1x1 conv-BN, a large
depthwise conv, GELU instead of softmax, another large depthwise conv (Yun et al., "FFNet: MetaMixer-based Efficient
Convolutional Mixer Design", 2024)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.common.reparam import ConvBN
from metablocks.registry import Component, Context, Ref, register


def spatial_problems(config: Component, fields: tuple[str, ...]) -> list[str]:
    """Each nested spatial op in ``fields`` must work on (B, C, H, W) maps, as the 1x1 convs around it do."""
    return [f"{name} must work on (B, C, H, W) maps; {getattr(config, name).type} is channels-last"
            for name in fields if type(getattr(config, name)).layout == "channels_last"]


class FFNifiedAttentionConfig(Component):
    layout = "channels_first"
    conv1: Annotated[Component, Ref("token_mixer")] = "repvgg_dw"  # the "keys": FFNet stages 1-2 dwconv 3, 3-4 repvgg 7
    act: Annotated[Component, Ref("act")] = "gelu"  # in place of the softmax
    conv2: Annotated[Component, Ref("token_mixer")] = "repvgg_dw"  # the "values"

    def check(self, ctx: Context) -> list[str]:
        return spatial_problems(self, ("conv1", "conv2"))

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [((name,), getattr(self, name), Context(ctx.dim, resolution=ctx.resolution)) for name in ("conv1", "conv2")]


@register("token_mixer", "ffnified_attention", config=FFNifiedAttentionConfig)
class FFNifiedAttention(nn.Module):
    """conv2(act(conv1(fc(x)))): fc is a 1x1 conv-BN (the query projection), conv1/conv2 depthwise spatial ops (FFNet's
    Token_Mixer, Yun et al. 2024). The block adds the residual; names follow the official code (fc, conv1, act, conv2).
    ``metablocks.deploy`` folds fc's BN and fuses re-parameterizable spatial ops (``repvgg_dw``).
    """

    def __init__(self, dim: int, *, conv1: Component, act: Component, conv2: Component) -> None:
        super().__init__()
        self.fc = ConvBN(dim, dim)
        self.conv1 = conv1.build(Context(dim))
        self.act = act.build()
        self.conv2 = conv2.build(Context(dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.conv2(self.act(self.conv1(self.fc(x))))
