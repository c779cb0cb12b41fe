"""A stack of conv -> norm -> act layers as a stem or a downsampler: deep convolutional stems and transitions
(e.g. RepLKNet, Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022; UniRepLKNet, Ding et al., CVPR 2024)."""
from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.components.common.conv_arith import conv_out
from metablocks.components.common.reparam import fold_bn_into_conv
from metablocks.fields import Kernel, Padding, Ratio, Stride, Width
from metablocks.registry import Component, Context, Ref, register


class ConvLayer(BaseModel):
    """One conv -> norm -> act layer of a stack; its width is a fraction of the stack's output channels."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kernel_size: Kernel = 3
    stride: Stride = 1
    padding: Padding | None = None  # None: kernel_size // 2
    width: Ratio = 1.0  # output channels = int(width * out_dim)
    depthwise: bool = False  # one filter per channel (needs as many channels in as out)
    bias: bool = True
    norm: Annotated[Component, Ref("norm")] | None = None
    act: Annotated[Component, Ref("act")] | None = None

    @property
    def pad(self) -> int:
        return self.kernel_size // 2 if self.padding is None else self.padding


class ConvStackConfig(Component):
    layout = "channels_first"
    omit_when_default = frozenset({"channels"})  # added later: recipes without it keep their model_id
    layers: list[ConvLayer] = Field(min_length=1, max_length=64)
    # the layers' own widths, one per layer (Next-ViT's stem: 64, 32, 64, 64); the stack then sets its output width
    # as the ResNet stem does, instead of taking the next stage's. None: each layer's ``width`` x the output channels
    channels: list[Width] | None = Field(default=None, min_length=1, max_length=64)

    def out_dim(self, dim: int) -> int:
        return self.channels[-1] if self.channels is not None else dim

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        for layer in self.layers:
            resolution = conv_out(resolution, layer.kernel_size, layer.stride, layer.pad)
        return resolution

    def widths(self, out_dim: int) -> list[int]:
        """Channels out of each layer."""
        if self.channels is not None:
            return list(self.channels)
        return [int(layer.width * out_dim) for layer in self.layers]

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        widths = self.widths(ctx.out_dim if ctx.out_dim is not None else ctx.dim)
        return [(("layers", i, slot), getattr(layer, slot), Context(max(width, 1)))
                for i, (layer, width) in enumerate(zip(self.layers, widths)) for slot in ("norm", "act")
                if getattr(layer, slot) is not None]

    def check(self, ctx: Context) -> list[str]:
        errors = []
        out_dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        if self.channels is not None and len(self.channels) != len(self.layers):
            return [f"channels gives {len(self.channels)} widths for {len(self.layers)} layers (one per layer)"]
        if self.channels is not None and any(layer.width != 1.0 for layer in self.layers):
            errors.append("give the layers' widths either as channels or as each layer's width, not both")
        widths = self.widths(out_dim)
        if widths[-1] != out_dim:
            errors.append(f"the last layer must give the {out_dim} channels the next stage needs, "
                          f"got width {self.layers[-1].width} -> {widths[-1]}")
        for i, (layer, in_dim, width) in enumerate(zip(self.layers, [ctx.dim, *widths], widths)):
            if width < 1:
                errors.append(f"layers[{i}]: width {layer.width} leaves no channels")
            if layer.depthwise and in_dim != width:
                errors.append(f"layers[{i}] is depthwise, so it needs as many channels out as in ({in_dim}), got {width}")
        resolution = ctx.resolution
        for i, layer in enumerate(self.layers if resolution else []):  # every layer's map, not only the last
            resolution = conv_out(resolution, layer.kernel_size, layer.stride, layer.pad)
            if min(resolution) < 1:
                errors.append(f"a {ctx.resolution[0]}x{ctx.resolution[1]} input is too small for this stack of "
                              f"convolutions (layers[{i}], a {layer.kernel_size}x{layer.kernel_size} conv, leaves no map)")
                break
        return errors

    def build(self, ctx: Context) -> nn.Module:
        out_dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return self.module(ctx.dim, out_dim, layers=self.layers, channels=self.channels)


class ConvNormAct(nn.Module):
    """conv -> norm -> act, each optional but the conv."""

    def __init__(self, in_dim: int, out_dim: int, layer: ConvLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, layer.kernel_size, stride=layer.stride, padding=layer.pad,
                              groups=in_dim if layer.depthwise else 1, bias=layer.bias)
        self.norm = layer.norm.build(Context(out_dim, layout="channels_first")) if layer.norm else nn.Identity()
        self.act = inplace_act(layer.act) if layer.act else nn.Identity()  # on the conv/norm's fresh output

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold a BatchNorm into the conv (eval-mode equivalent); other norms stay."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fold_bn_into_conv(self.conv, self.norm)
            self.norm = nn.Identity()


class ConvStack(nn.Module):
    """conv-norm-act layers in sequence, (B, C_in, H, W) -> (B, C_out, H / prod(strides), W / prod(strides))."""

    def __init__(self, in_dim: int, out_dim: int, *, layers: list[ConvLayer], channels: list[int] | None = None) -> None:
        super().__init__()
        widths = list(channels) if channels is not None else [int(layer.width * out_dim) for layer in layers]
        self.layers = nn.Sequential(*(ConvNormAct(i, o, layer) for i, o, layer in zip([in_dim, *widths], widths, layers)))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.layers(x)


@register("stem", "conv_stack", config=ConvStackConfig)
class ConvStackStem(ConvStack):
    """A stem of conv-norm-act layers (UniRepLKNet's two stride-2 3x3 convs, RepLKNet's four-conv stem)."""


@register("downsample", "conv_stack", config=ConvStackConfig)
class ConvStackDownsample(ConvStack):
    """A downsampler of conv-norm-act layers (RepLKNet's 1x1 conv then stride-2 depthwise 3x3 transition)."""
