"""Ghost module: a 1x1 conv makes half the channels ("intrinsic"), a cheap depthwise conv makes the other half
from them ("ghosts") (Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020); GhostNetV2's version
multiplies the result by the DFC attention gate (Tang et al., "GhostNetV2: Enhance Cheap Operation with Long-Range
Attention", NeurIPS 2022):

    y1 = act(bn(conv1x1(x)))                 init = ceil(out / ratio) channels
    y2 = act(bn(dwconv_kxk(y1)))             init * (ratio - 1) channels
    y  = cat[y1, y2][:, :out]
    y  = y * up_nearest(sigmoid(DFC(avgpool2(x))))     (``dfc: true``; GhostNetV2's 'attn' mode)

    DFC(x) = bn(dwconv_5x1(bn(dwconv_1x5(bn(conv1x1(x))))))   a horizontal then a vertical "fully connected" layer,
                                                               decoupled and computed at half resolution

As a token mixer it maps ``dim`` to ``out_dim`` channels (a transition). Attribute names: ``primary``/``cheap``
(timm's ``primary_conv``/``cheap_operation``), each a conv and a norm, and ``dfc`` (timm's ``short_conv``).
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, Strict
from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import Kernel
from metablocks.registry import Component, Context, Ref, register

GhostRatio = Annotated[int, Strict(), Field(ge=2, le=16)]


def dfc_problems(resolution: tuple[int, int] | None) -> list[str]:
    """The DFC gate pools by 2 before it mixes: a map narrower than 2 has nothing to pool."""
    if resolution is not None and min(resolution) < 2:
        return [f"the DFC gate average-pools its {resolution[0]}x{resolution[1]} input by 2: it needs a map of at "
                f"least 2x2 (give a larger img_size, or dfc: false)"]
    return []


class DFCGate(nn.Module):
    """sigmoid(bn(dw kx1(bn(dw 1xk(bn(conv1x1(avgpool2 x))))))) upsampled (nearest) to ``size``: GhostNetV2's decoupled
    fully connected attention (Tang et al. 2022), one gate value per output channel and position."""

    def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int = 5, norm: Component) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.norm = norm.build(Context(out_dim))
        self.conv_w = nn.Conv2d(out_dim, out_dim, (1, kernel_size), padding=(0, pad), groups=out_dim, bias=False)
        self.norm_w = norm.build(Context(out_dim))
        self.conv_h = nn.Conv2d(out_dim, out_dim, (kernel_size, 1), padding=(pad, 0), groups=out_dim, bias=False)
        self.norm_h = norm.build(Context(out_dim))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, *size) in (0, 1)
        a = self.norm(self.conv(F.avg_pool2d(x, kernel_size=2, stride=2)))  # (B, C_out, H // 2, W // 2)
        a = self.norm_h(self.conv_h(self.norm_w(self.conv_w(a))))  # along W, then along H
        return F.interpolate(torch.sigmoid(a), size=size, mode="nearest")


class GhostModuleConfig(Component):
    layout = "channels_first"
    ratio: GhostRatio = 2  # out / intrinsic channels: 1 / ratio of the output comes from the 1x1 conv
    kernel_size: Kernel = 1  # of the primary conv
    dw_size: Kernel = 3  # of the cheap depthwise conv
    act: Annotated[Component, Ref("act")] | None = "relu"  # after both convs (None: linear, the bottleneck's second)
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    dfc: bool = False  # multiply by the DFC attention gate (GhostNetV2)
    dfc_kernel: Kernel = 5  # of the DFC gate's 1xk and kx1 depthwise convs

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        init = math.ceil(out / self.ratio)
        found: list[tuple[tuple[Any, ...], Component, Context]] = [(("norm",), self.norm, Context(init))]
        if self.act is not None:
            found.append((("act",), self.act, Context(init)))
        return found

    def check(self, ctx: Context) -> list[str]:
        errors = [f"{name}={value} must be odd to keep the map size"
                  for name, value in (("kernel_size", self.kernel_size), ("dw_size", self.dw_size),
                                      ("dfc_kernel", self.dfc_kernel)) if value % 2 == 0]
        return errors + (dfc_problems(ctx.resolution) if self.dfc else [])


@register("token_mixer", "ghost_module", config=GhostModuleConfig)
class GhostModule(nn.Module):
    """cat[primary(x), cheap(primary(x))][:, :out], optionally x the DFC gate: the Ghost module (Han et al. 2020) and
    GhostNetV2's DFC-attended one (Tang et al. 2022); ``dim`` channels in, ``out_dim`` out."""

    def __init__(self, dim: int, *, out_dim: int | None = None, ratio: int = 2, kernel_size: int = 1, dw_size: int = 3,
                 act: Component | None, norm: Component, dfc: bool = False, dfc_kernel: int = 5) -> None:
        super().__init__()
        self.out_dim = out = out_dim if out_dim is not None else dim
        init = math.ceil(out / ratio)
        self.primary = nn.Sequential()
        self.primary.add_module("conv", nn.Conv2d(dim, init, kernel_size, padding=kernel_size // 2, bias=False))
        self.primary.add_module("norm", norm.build(Context(init)))
        self.cheap = nn.Sequential()
        self.cheap.add_module("conv", nn.Conv2d(init, init * (ratio - 1), dw_size, padding=dw_size // 2, groups=init,
                                                bias=False))
        self.cheap.add_module("norm", norm.build(Context(init * (ratio - 1))))
        if act is not None:  # in place: on the norms' fresh outputs
            self.primary.add_module("act", inplace_act(act))
            self.cheap.add_module("act", inplace_act(act))
        self.trim = init * ratio != out  # an odd width: the cheap conv's last channel is cut off
        self.dfc = DFCGate(dim, out, kernel_size=dfc_kernel, norm=norm) if dfc else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        intrinsic = self.primary(x)
        y = torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)
        if self.trim:
            y = y[:, : self.out_dim]
        if self.dfc is not None:
            y = y * self.dfc(x, (y.shape[-2], y.shape[-1]))
        return y
