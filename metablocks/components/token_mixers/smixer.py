"""SpaRTAN's spatial mixer (Pay et al., "SpaRTAN: Spatial Reinforcement Token-based Aggregation Network for Visual
Recognition", IJCNN 2025; official code henry-pay/SpaRTAN ``src/model/spartan.py``, ``SMixer``).

    u  = proj_in(x)                                   1x1 conv, C -> C/2
    u  = u + gamma * (u - GAP(u))                      reinforce what differs from the map's mean (gamma init 1e-5)
    h  = SE(conv-BN-GELU_kxk(u))                       the local branch
    l  = SE(conv-BN-GELU_kxk,d(conv_kxk,d(u)))         two dilated convs (the first bare): a wider receptive field
    y  = proj_out([h ; l])                             concat -> 1x1 conv, C -> C

The official network uses full 3x3 convs in its first half (stages 1-2) and depthwise ones (groups = C/2) in the
second half (stages 3-4): ``group_width`` says which, per stage in the recipe. The official code asserts dim % 8 == 0;
the mixer itself needs only an even dim and at least one squeeze-excite channel, which ``check`` asks for.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.channel_mixers.squeeze_excite import SqueezeExcite
from metablocks.fields import Dilation, Kernel, Ratio, Scale, Width
from metablocks.registry import Component, Context, Ref, register


class ConvNormAct(nn.Module):
    """conv (no bias) -> norm -> act, the official ``ConvNormAct``; norm and act optional."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, *, dilation: int = 1, groups: int = 1,
                 norm: Component | None = None, act: Component | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                              groups=groups, bias=False)
        self.norm = norm.build(Context(out_dim, layout="channels_first")) if norm is not None else nn.Identity()
        self.act = act.build() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


def conv_groups(channels: int, group_width: int | None) -> int:
    """Groups of a conv over ``channels`` whose groups are ``group_width`` channels wide (None: one group, a full conv)."""
    return 1 if group_width is None else channels // group_width


def group_problems(channels: int, group_width: int | None, what: str) -> list[str]:
    if group_width is not None and channels % group_width:
        return [f"group_width={group_width} does not divide the {channels} channels of the {what}"]
    return []


class SMixerConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 3
    dilation: Dilation = 2  # of the second branch's two convs
    group_width: Width | None = None  # channels per group of the kxk convs; None: full convs, 1: depthwise
    se_ratio: Ratio = 0.25  # squeeze-excite hidden width, a fraction of C/2
    gamma: Scale = 1e-5  # init of the per-channel scale of (u - GAP u)
    norm: Annotated[Component, Ref("norm")] = "batchnorm"  # after each branch's last conv (SpaRTAN: eps 1e-6)
    act: Annotated[Component, Ref("act")] = "gelu"

    def check(self, ctx: Context) -> list[str]:
        if ctx.dim % 2:
            return [f"smixer halves the channels, so dim must be even, got {ctx.dim}"]
        half = ctx.dim // 2
        errors = group_problems(half, self.group_width, "smixer's convs (dim / 2)")
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {self.kernel_size}")
        if int(half * self.se_ratio) < 1:
            errors.append(f"se_ratio={self.se_ratio} leaves no squeeze-excite channels at dim / 2 = {half}")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        half = Context(max(ctx.dim // 2, 1), resolution=ctx.resolution)
        return [(("norm",), self.norm, half), (("act",), self.act, half)]


@register("token_mixer", "smixer", config=SMixerConfig)
class SMixer(nn.Module):
    """Multi-order spatial mixer: 1x1 to C/2, u + gamma(u - GAP u), kxk conv || two dilated kxk convs, each + SE,
    concat -> 1x1 (SpaRTAN, Pay et al. 2025)."""

    def __init__(self, dim: int, *, kernel_size: int = 3, dilation: int = 2, group_width: int | None = None,
                 se_ratio: float = 0.25, gamma: float = 1e-5, norm: Component, act: Component) -> None:
        super().__init__()
        half = dim // 2
        groups = conv_groups(half, group_width)
        self.proj_in = nn.Conv2d(dim, half, 1)
        self.gamma = nn.Parameter(torch.full((half,), float(gamma)))
        self.h_conv = ConvNormAct(half, half, kernel_size, groups=groups, norm=norm, act=act)
        self.l_conv = nn.Sequential(ConvNormAct(half, half, kernel_size, dilation=dilation, groups=groups),
                                    ConvNormAct(half, half, kernel_size, dilation=dilation, groups=groups, norm=norm,
                                                act=act))
        self.h_se = SqueezeExcite(half, int(half * se_ratio))
        self.l_se = SqueezeExcite(half, int(half * se_ratio))
        self.proj_out = nn.Conv2d(2 * half, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        u = self.proj_in(x)  # (B, C/2, H, W)
        u = u + self.gamma[:, None, None] * (u - F.adaptive_avg_pool2d(u, 1))
        return self.proj_out(torch.cat([self.h_se(self.h_conv(u)), self.l_se(self.l_conv(u))], dim=1))
