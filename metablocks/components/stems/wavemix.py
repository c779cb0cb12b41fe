"""WaveMix "pachify" stem: two 3x3 convs at full resolution (C/4, C/2 channels), a p x p stride-p patch conv to C,
then GELU and BatchNorm (Jeevan & Sethi, "WaveMix: A Resource-efficient Neural Network for Image Analysis", 2022;
the official ``wavemix.classification.WaveMix`` with ``initial_conv='pachify'``)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.common.conv_arith import conv_out
from metablocks.fields import Stride
from metablocks.registry import Component, Context, Ref, register


class WaveMixStemConfig(Component):
    layout = "channels_first"
    patch_size: Stride = 4  # kernel and stride of the patch conv
    act: Annotated[Component, Ref("act")] = "gelu"
    norm: Annotated[Component, Ref("norm")] = "batchnorm"

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.patch_size, self.patch_size, 0)  # the 3x3 convs (padding 1) keep the size

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.out_dim if ctx.out_dim is not None else ctx.dim))]

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.out_dim is not None and ctx.out_dim % 4:
            errors.append(f"the stem's widths are dim/4 and dim/2, so dim must be divisible by 4, got {ctx.out_dim}")
        if ctx.resolution and min(self.out_resolution(ctx.resolution)) < 1:
            errors.append(f"input {ctx.resolution[0]}x{ctx.resolution[1]} is smaller than one {self.patch_size}x"
                          f"{self.patch_size} patch")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a stem needs the first stage's dim"
        return self.module(ctx.dim, ctx.out_dim, patch_size=self.patch_size, act=self.act, norm=self.norm)


@register("stem", "wavemix", config=WaveMixStemConfig)
class WaveMixStem(nn.Module):
    """conv3x3 -> conv3x3 -> conv pxp/p -> act -> norm, as one Sequential ``conv`` (indices 0..4 as the official code)."""

    def __init__(self, in_chans: int, dim: int, *, patch_size: int = 4, act: Component, norm: Component) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, dim // 4, 3, padding=1),
            nn.Conv2d(dim // 4, dim // 2, 3, padding=1),
            nn.Conv2d(dim // 2, dim, patch_size, stride=patch_size),
            act.build(),
            norm.build(Context(dim)),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, dim, H/p, W/p)
        return self.conv(x)
