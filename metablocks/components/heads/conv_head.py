"""Conv head: global pool -> 1x1 conv to a fixed width -> act -> drop -> classifier, the pre-logits layer of the
efficient CNNs (MobileNetV3's ``conv_head``, Howard et al. 2019; FasterNet's 1280-wide head, Chen et al., "Run,
Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR 2023)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.components.heads.classifier import checked_pool
from metablocks.fields import Probability, Width
from metablocks.registry import Component, Context, Ref, register


class ConvHeadConfig(Component):
    pool: Literal["avg", "max", ""] = "avg"  # "": no global pool, the conv and classifier at every position
    width: Width = 1280  # channels of the 1x1 conv after the pool (the features pre_logits gives)
    act: Annotated[Component, Ref("act")] = "relu"
    bias: bool = False  # of the 1x1 conv (the classifier always has one)
    drop_rate: Probability = 0.0  # before the classifier

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("act",), self.act, Context(self.width))]

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim, **self.kwargs())


@register("head", "conv_head", config=ConvHeadConfig)
class ConvHead(nn.Module):
    """pool -> ``conv`` (1x1, dim -> width) -> act -> drop -> ``fc``; ``reset`` replaces only ``fc`` and
    ``pre_logits`` gives the ``width`` features, as timm's FasterNet / MobileNetV3 heads."""

    def __init__(self, dim: int, num_classes: int, *, pool: str = "avg", width: int = 1280, act: Component,
                 bias: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = pool
        self.num_features = self.hidden_size = width  # hidden_size: what pre_logits gives
        self.conv = nn.Conv2d(dim, width, 1, bias=bias)
        self.act = inplace_act(act)  # on the conv's fresh output
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: the ``width`` features out); the conv is kept. ``pool`` sets the
        global pool ("avg", "max", or "": none)."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if pool is not None:
            self.pool = checked_pool(pool)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W)
        if self.pool != "":
            x = x.mean((2, 3), keepdim=True) if self.pool == "avg" else x.amax((2, 3), keepdim=True)  # (B, C, 1, 1)
        x = self.drop(self.act(self.conv(x)))  # (B, width, h, w)
        if self.pool != "":
            x = x.flatten(1)  # (B, width)
            return x if pre_logits else self.fc(x)
        x = x.permute(0, 2, 3, 1)  # no global pool: the classifier at every position
        return (x if pre_logits else self.fc(x)).permute(0, 3, 1, 2)
