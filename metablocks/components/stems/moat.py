"""MOAT's stem: 3x3 convs of the given widths, the first of stride 2, with a norm and an activation between them and
none after the last (Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models",
ICLR 2023; the official deeplab2 code, model/pixel_encoder/moat.py; CoAtNet and MaxViT stems have the same shape)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any

from pydantic import Field
from torch import nn

from metablocks.components.common.same_padding import PaddingMode, conv2d
from metablocks.fields import Kernel, Width
from metablocks.registry import Component, Context, Ref, register


class MoatStemConfig(Component):
    layout = "channels_first"
    channels: list[Width] = Field([64, 64], min_length=1, max_length=16)  # MOAT-0/1: [64, 64]; tiny-MOAT-0: [32, 32]
    kernel_size: Kernel = 3
    bias: bool = True
    norm: Annotated[Component, Ref("norm")] = "batchnorm"  # after every conv but the last
    act: Annotated[Component, Ref("act")] = "gelu"
    padding: PaddingMode = "symmetric"  # "same": TensorFlow's, as the official code (the stride-2 conv pads 0/1)

    def out_dim(self, dim: int) -> int:
        return self.channels[-1]  # the stem sets its own width; the first block of stage 0 widens it

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return tuple(-(-r // 2) for r in resolution)  # type: ignore[return-value]  # both paddings give ceil(H / 2)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(width)) for width in dict.fromkeys(self.channels[:-1])]

    def check(self, ctx: Context) -> list[str]:
        return [] if self.kernel_size % 2 else [f"kernel_size must be odd to keep the map centred, got {self.kernel_size}"]

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, channels=self.channels, kernel_size=self.kernel_size, bias=self.bias,
                           norm=self.norm, act=self.act, padding=self.padding)


@register("stem", "moat", config=MoatStemConfig)
class MoatStem(nn.Sequential):
    """conv1 (stride 2) -> norm1 -> act1 -> conv2 -> ... -> conv{n}: MOAT's stem (Yang et al. 2022)."""

    def __init__(self, in_chans: int, *, channels: list[int], kernel_size: int = 3, bias: bool = True,
                 norm: Component, act: Component, padding: PaddingMode = "symmetric") -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (c_in, c_out) in enumerate(zip([in_chans, *channels], channels), start=1):
            layers[f"conv{i}"] = conv2d(c_in, c_out, kernel_size, stride=2 if i == 1 else 1, bias=bias, padding=padding)
            if i < len(channels):
                layers[f"norm{i}"] = norm.build(Context(c_out))
                layers[f"act{i}"] = act.build()
        super().__init__(layers)  # (B, 3, H, W) -> (B, channels[-1], ceil(H / 2), ceil(W / 2))
