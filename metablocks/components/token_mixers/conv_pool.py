"""Conv-pool transition: a 1x1 conv -> norm -> act, then an average pool of the block's stride, OSNet's transition
between stages (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019; torchreid's
``Sequential(Conv1x1, AvgPool2d(2, stride=2))``; DenseNet's transition layer in conv-first order, Huang et al. 2017).

As a token mixer it is the path of a plain branch (``{path: [token_mixer], kind: plain}``) in the first block of a
stage with ``stride: 2``: the block carries the stride, the pool applies it. The pool floors an odd side (as
``AvgPool2d``), so the check asks for sides the stride divides. Names: ``conv``, ``bn`` (the official ones).
"""
from __future__ import annotations

from typing import Annotated, Any

import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.registry import Component, Context, Ref, register


class ConvPoolConfig(Component):
    layout = "channels_first"
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    act: Annotated[Component, Ref("act")] | None = "relu"

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return [(("norm",), self.norm, Context(out))] + ([(("act",), self.act, Context(out))] if self.act else [])

    def check(self, ctx: Context) -> list[str]:
        if ctx.stride > 1 and ctx.resolution is not None and any(side % ctx.stride for side in ctx.resolution):
            h, w = ctx.resolution
            return [f"the average pool of stride {ctx.stride} floors a {h}x{w} map (to {h // ctx.stride}x"
                    f"{w // ctx.stride}, not the {-(-h // ctx.stride)}x{-(-w // ctx.stride)} the next blocks are "
                    f"built for): give an img_size whose map here is a multiple of {ctx.stride}"]
        return []


@register("token_mixer", "conv_pool", config=ConvPoolConfig)
class ConvPool(nn.Module):
    """avgpool_s(act(bn(conv1x1(x)))): OSNet's transition (Zhou et al. 2019); ``dim`` in, ``out_dim`` out."""

    def __init__(self, dim: int, *, out_dim: int | None = None, stride: int = 1, norm: Component,
                 act: Component | None) -> None:
        super().__init__()
        out = out_dim if out_dim is not None else dim
        self.stride = stride
        self.conv = nn.Conv2d(dim, out, 1, bias=False)
        self.bn = norm.build(Context(out))
        self.act = inplace_act(act) if act is not None else nn.Identity()  # on the norm's fresh output

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H // s, W // s)
        x = self.act(self.bn(self.conv(x)))
        return F.avg_pool2d(x, self.stride, self.stride) if self.stride > 1 else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
