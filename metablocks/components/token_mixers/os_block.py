"""Omni-scale residual branch: a 1x1 reduction, T streams of 1..T lightweight 3x3 convs (receptive fields 3, 5, 7, 9),
ONE channel gate shared by every stream, their sum, and a linear 1x1 expansion (Zhou et al., "Omni-Scale Feature
Learning for Person Re-Identification", ICCV 2019; the official torchreid ``OSBlock``):

    m  = relu(bn(conv1x1(x)))                                      mid = dim / reduction channels
    x2 = sum_t gate(L_t(...L_1(m)))      L = relu(bn(dw3x3(conv1x1(.))))  (LightConv3x3), gate = the unified
                                                                      aggregation gate, x * sigmoid(fc2(relu(fc1(GAP x))))
    y  = bn(conv1x1(x2))

As a token mixer it is a block's one branch, ``x = relu(shortcut(x) + os_block(x))`` (``post_act: relu``; the shortcut
is a 1x1 conv + BN ``projection`` where the width changes). Attribute names follow the official code's: ``conv1``,
``streams.t.l`` (its ``conv2a``, ``conv2b.l``, ...), ``gate`` (``fc1``/``fc2`` as the SE's ``down``/``up``), ``conv3``.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import Field, Strict
from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.components.channel_mixers.squeeze_excite import SqueezeExcite
from metablocks.registry import Component, Context, Ref, register

Reduction = Annotated[int, Strict(), Field(ge=1, le=1024)]
StreamDepth = Annotated[int, Strict(), Field(ge=1, le=16)]


class ConvNorm(nn.Sequential):
    """conv -> norm [-> act] with the official ``conv``/``bn``/``relu`` names (torchreid's Conv1x1, Conv1x1Linear)."""

    def __init__(self, in_dim: int, out_dim: int, *, norm: Component, act: Component | None, kernel_size: int = 1,
                 stride: int = 1) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2,
                                          bias=False))
        self.add_module("bn", norm.build(Context(out_dim)))
        if act is not None:
            self.add_module("relu", inplace_act(act))  # on the norm's fresh output


class LightConv3x3(nn.Module):
    """relu(bn(dw3x3(conv1x1(x)))): a linear pointwise conv, then a depthwise 3x3 (Zhou et al. 2019)."""

    def __init__(self, dim: int, *, norm: Component, act: Component) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.bn = norm.build(Context(dim))
        self.relu = inplace_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class OSBlockConfig(Component):
    layout = "channels_first"
    reduction: Reduction = 4  # bottleneck width = dim // reduction (dim: the block's output width)
    streams: list[StreamDepth] = Field([1, 2, 3, 4], min_length=1, max_length=16)  # LightConv3x3 layers per stream
    gate_reduction: Reduction = 16  # the shared gate's hidden width = mid // gate_reduction
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    act: Annotated[Component, Ref("act")] = "relu"

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim  # a transition block: its output width
        mid = max(dim // self.reduction, 1)
        return [(("norm",), self.norm, Context(width)) for width in dict.fromkeys([mid, dim])] + [
            (("act",), self.act, Context(mid))]

    def check(self, ctx: Context) -> list[str]:
        dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        mid = dim // self.reduction
        if mid < 1:
            return [f"reduction={self.reduction} leaves no channels at dim={dim} ({dim} // {self.reduction} = 0)"]
        if mid // self.gate_reduction < 1:
            return [f"gate_reduction={self.gate_reduction} leaves the channel gate no hidden unit at the bottleneck "
                    f"width {mid} (dim={dim} // reduction={self.reduction}; {mid} // {self.gate_reduction} = 0)"]
        return []


@register("token_mixer", "os_block", config=OSBlockConfig)
class OSBlock(nn.Module):
    """conv1 -> streams of LightConv3x3, each through the one shared gate, summed -> conv3 (linear): OSNet's residual
    branch without its shortcut (Zhou et al. 2019). ``in_dim``: the block that changes the width."""

    def __init__(self, dim: int, *, in_dim: int | None = None, reduction: int = 4, streams: list[int] = (1, 2, 3, 4),
                 gate_reduction: int = 16, norm: Component, act: Component) -> None:
        super().__init__()
        mid = dim // reduction
        self.conv1 = ConvNorm(in_dim or dim, mid, norm=norm, act=act)
        self.streams = nn.ModuleList(nn.Sequential(*(LightConv3x3(mid, norm=norm, act=act) for _ in range(depth)))
                                     for depth in streams)
        self.gate = SqueezeExcite(mid, mid // gate_reduction, act=nn.ReLU(inplace=True))  # one gate for every stream
        self.conv3 = ConvNorm(mid, dim, norm=norm, act=None)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, H, W)
        x = self.conv1(x)
        y: Optional[Tensor] = None
        for stream in self.streams:  # ((g(a) + g(b)) + g(c)) + g(d), the official order
            gated = self.gate(stream(x))
            y = gated if y is None else y + gated
        assert y is not None
        return self.conv3(y)
