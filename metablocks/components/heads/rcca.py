"""RCCA segmentation head: reduce, recurrent criss-cross attention, fuse with the input, classify every position
(Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019).

As the official ``RCCAModule`` (speedinghzl/CCNet, networks/ccnet.py):

    y = conva(x)                          # 3x3 conv C -> C/4, norm, act
    y = attention(y)                      # criss-cross attention, R = 2 passes with shared weights, x + gamma*A(x)
    y = convb(y)                          # 3x3 conv C/4 -> C/4, norm, act
    y = bottleneck([x | y])               # 3x3 conv C + C/4 -> 512, norm, act, Dropout2d(0.1)
    logits = fc(y)                        # 1x1 conv 512 -> num_classes (with bias)

giving (B, num_classes, H, W) at the backbone's resolution (H/8 for a dilated ResNet); like the official model it does
not upsample (the official training and evaluation code resizes the logits to the label size outside the model).
The official norm + activation is InPlaceABNSync, BatchNorm followed by leaky ReLU (slope 0.01). The auxiliary
``dsn`` head on the third stage is a training-only loss branch and is not part of this head.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn

from metablocks.fields import Probability, Width
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class RCCAHeadConfig(Component):
    layout = "channels_first"
    reduction: Width = 4  # conva/convb width: dim // reduction (official: in_channels // 4)
    hidden_dim: Width = 512  # the bottleneck conv's width (official out_channels = 512)
    attention: Annotated[Component, Ref("token_mixer")] = {"type": "criss_cross", "recurrence": 2, "residual": True}
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    act: Annotated[Component, Ref("act")] = {"type": "leaky_relu", "negative_slope": 0.01}
    drop_rate: Probability = 0.1  # Dropout2d before the classifier

    def check(self, ctx: Context) -> list[str]:
        inter = ctx.dim // self.reduction
        if inter < 1:
            return [f"reduction={self.reduction} leaves no channels for dim={ctx.dim}"]
        return []

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        inter = max(ctx.dim // self.reduction, 1)
        return [(("attention",), self.attention, Context(inter, resolution=ctx.resolution)),
                *((("norm",), self.norm, Context(width)) for width in dict.fromkeys([inter, self.hidden_dim]))]

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim if ctx.out_dim is not None else 0, resolution=ctx.resolution, **self.kwargs())


def _conv_norm_act(in_dim: int, out_dim: int, norm: Component, act: Component) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False), norm.build(Context(out_dim)), act.build())


@register("head", "rcca", config=RCCAHeadConfig)
class RCCAHead(nn.Module):
    """conva -> attention -> convb -> bottleneck([x | .]) -> fc: per-position logits (CCNet's RCCA module, Huang et al. 2019).

    Names follow the official module (``conva``, ``cca``, ``convb``, ``bottleneck``); its final 1x1 conv
    (``bottleneck.3`` there) is ``fc`` here, the classifier that ``reset_classifier`` replaces.
    """

    def __init__(self, dim: int, num_classes: int, *, reduction: int = 4, hidden_dim: int = 512, attention: Component,
                 norm: Component, act: Component, drop_rate: float = 0.1, resolution: tuple[int, int] | None = None) -> None:
        super().__init__()
        inter = dim // reduction
        self.hidden_dim = self.hidden_size = hidden_dim  # hidden_size: the channels pre_logits gives
        self.conva = _conv_norm_act(dim, inter, norm, act)
        self.cca = build_at(attention, inter, "channels_first", resolution=resolution)  # any token mixer, in its layout
        self.convb = _conv_norm_act(inter, inter, norm, act)
        self.bottleneck = nn.Sequential(*_conv_norm_act(dim + inter, hidden_dim, norm, act), nn.Dropout2d(drop_rate))
        self.fc = self.classifier(num_classes)

    def classifier(self, num_classes: int) -> nn.Module:
        return nn.Conv2d(self.hidden_dim, num_classes, 1) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: the fused 512-channel map out); a per-position head has no
        global pool to set (``pool`` must be None or "")."""
        if pool:
            raise ValueError(f"global_pool={pool!r}: the rcca head classifies every position and has no global pool; "
                             "allowed: None or ''")
        self.fc = self.classifier(num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W) -> (B, num_classes, H, W)
        y = self.convb(self.cca(self.conva(x)))  # (B, C/4, H, W)
        y = self.bottleneck(torch.cat([x, y], dim=1))  # (B, hidden_dim, H, W)
        return y if pre_logits else self.fc(y)
