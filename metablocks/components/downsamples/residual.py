"""Residual downsample: the first block of a ResNet stage, ``act(branch(x) + shortcut(x))`` with a strided branch and
a 1x1 conv + norm projection shortcut (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The branch is a token mixer built with ``in_dim`` and ``stride`` (``bottleneck`` by default), so the block is the
same module the stage's other blocks use, plus the projection and the post-add activation. The shortcut is the
identity when neither the width nor the size changes (as timm). A ResNet stage is then this downsample followed by
``depth`` plain blocks (``x = relu(x + bottleneck(x))``): a paper's stage of n blocks is ``depth: n - 1`` here.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.blocks import overwritable
from metablocks.components.acts.elementwise import inplace_act
from metablocks.components.common.conv_arith import conv_out
from metablocks.fields import Stride
from metablocks.registry import Component, Context, Ref, register


class ResidualDownsampleConfig(Component):
    layout = "channels_first"
    stride: Stride = 2  # on the branch (ResNet: its 3x3 conv) and the projection shortcut
    token_mixer: Annotated[Component, Ref("token_mixer")] = "bottleneck"  # the branch; needs in_dim and stride
    norm: Annotated[Component, Ref("norm")] = "batchnorm"  # of the projection shortcut
    post_act: Annotated[Component, Ref("act")] | None = "relu"  # after the sum

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, 1, self.stride, 0)  # the 1x1 stride-s projection; the 3x3 (padding 1) agrees

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        out_dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        found = [(("token_mixer",), self.token_mixer, Context(out_dim, resolution=ctx.resolution, stage=ctx.stage))]
        if self.stride != 1 or ctx.dim != out_dim:
            found.append((("norm",), self.norm, Context(out_dim)))
        return found

    def check(self, ctx: Context) -> list[str]:
        errors = []
        params = inspect.signature(self.token_mixer.module).parameters
        if not {"in_dim", "stride"} <= set(params):
            errors.append(f"token_mixer {self.token_mixer.name!r} cannot be the branch of a residual downsample: its module "
                          f"takes no in_dim/stride arguments (use one that does, e.g. 'bottleneck')")
        if ctx.resolution and min(self.out_resolution(ctx.resolution)) < 1:
            errors.append(f"a {ctx.resolution[0]}x{ctx.resolution[1]} map is too small for stride {self.stride}")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        out_dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        branch = self.token_mixer.module(out_dim, in_dim=ctx.dim, stride=self.stride, **self.token_mixer.kwargs())
        shortcut = None
        if self.stride != 1 or ctx.dim != out_dim:
            shortcut = nn.Sequential(OrderedDict(conv=nn.Conv2d(ctx.dim, out_dim, 1, stride=self.stride, bias=False),
                                                 norm=self.norm.build(Context(out_dim))))
        return self.module(branch, shortcut, inplace_act(self.post_act) if self.post_act is not None else None)


@register("downsample", "residual", config=ResidualDownsampleConfig)
class ResidualDownsample(nn.Module):
    """act(token_mixer(x) + shortcut(x)): the first block of a ResNet stage, with its projection shortcut (He et al. 2016)."""

    def __init__(self, token_mixer: nn.Module, shortcut: nn.Module | None = None, post_act: nn.Module | None = None) -> None:
        super().__init__()
        self.token_mixer = token_mixer
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = post_act if post_act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H / s, W / s)
        branch, shortcut = self.token_mixer(x), self.shortcut(x)
        return self.act(branch.add_(shortcut) if overwritable(branch, shortcut) else branch + shortcut)
