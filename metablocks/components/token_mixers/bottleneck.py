"""Bottleneck residual branch: 1x1 reduce -> 3x3 (optionally dilated, grouped, strided) -> 1x1 expand, each conv
followed by a norm (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

As a token mixer it is the branch of every ResNet block but the first of a stage, ``x = relu(x + bottleneck(x))``
(a recipe sets ``norm: null, channel_mixer: null, post_act: relu``). The first block of a stage, which changes the
width and/or strides, is the ``residual`` downsample (metablocks/components/residual_downsample.py): it builds this
same module with ``in_dim`` and ``stride``. Attribute names are timm's (conv1/bn1 ... conv3/bn3).
"""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import Dilation, Groups, Ratio
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class BottleneckConfig(Component):
    layout = "channels_first"
    ratio: Ratio = 0.25  # width of the 1x1/3x3 convs = int(dim * ratio); ResNet: dim / 4 ("planes")
    groups: Groups = 1  # groups of the 3x3 conv (ResNeXt's cardinality)
    dilation: Dilation = 1  # of the 3x3 conv (dilated ResNets for dense prediction: 2, 4)
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    act: Annotated[Component, Ref("act")] = "relu"
    zero_init_last: bool = True  # start the last norm's scale at 0, so every block starts as the identity (timm)
    attn: Annotated[Component, Ref("channel_mixer")] | None = None  # a gate after the last norm (ECA-Net: eca), timm's `se`
    omit_when_default = frozenset({"attn"})  # added later: recipes without it keep their model_id

    def width(self, dim: int) -> int:
        return int(dim * self.ratio)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        norms = [(("norm",), self.norm, Context(width)) for width in dict.fromkeys([max(self.width(ctx.dim), 1), ctx.dim])]
        if self.attn is None:
            return norms
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim  # the attention sees the block's output
        size = tuple(-(-r // ctx.stride) for r in ctx.resolution) if ctx.resolution else None
        return [*norms, (("attn",), self.attn, Context(out, resolution=size))]

    def check(self, ctx: Context) -> list[str]:
        width = self.width(ctx.dim)
        if width < 1:
            return [f"ratio={self.ratio} leaves no channels for dim={ctx.dim}"]
        if width % self.groups:
            return [f"groups={self.groups} does not divide the bottleneck width {width} (dim={ctx.dim} x ratio={self.ratio})"]
        return []


@register("token_mixer", "bottleneck", config=BottleneckConfig)
class Bottleneck(nn.Module):
    """conv1x1-norm-act, conv3x3-norm-act, conv1x1-norm [-> attn]: ResNet's bottleneck branch, without the shortcut (He et al. 2016).

    ``in_dim`` (default ``dim``) and ``stride`` are for the first block of a stage (the ``residual`` downsample); the
    stride sits on the 3x3 conv as in torchvision/timm ("ResNet v1.5").
    """

    def __init__(self, dim: int, *, in_dim: int | None = None, stride: int = 1, ratio: float = 0.25, groups: int = 1,
                 dilation: int = 1, norm: Component, act: Component, zero_init_last: bool = True,
                 attn: Component | None = None) -> None:
        super().__init__()
        width = int(dim * ratio)
        self.conv1 = nn.Conv2d(in_dim or dim, width, 1, bias=False)
        self.bn1 = norm.build(Context(width))
        self.act1 = inplace_act(act)  # after a norm
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                               bias=False)
        self.bn2 = norm.build(Context(width))
        self.act2 = inplace_act(act)  # after a norm
        self.conv3 = nn.Conv2d(width, dim, 1, bias=False)
        self.bn3 = norm.build(Context(dim))
        if zero_init_last and getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)
        self.se = build_at(attn, dim, "channels_first") if attn is not None else None  # timm's name for the attention

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, H / stride, W / stride)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.se(x) if self.se is not None else x
