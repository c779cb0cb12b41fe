"""ResNet stem: a stride-2 convolution (or a deep stack of 3x3 convs), norm, activation, then a 3x3 stride-2 max pool
(He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; deep stem: He et al., "Bag of Tricks for Image
Classification with Convolutional Neural Networks", CVPR 2019, and the PSPNet/CCNet ResNet-101 backbones)."""
from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field
from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.components.common.conv_arith import conv_out
from metablocks.fields import Kernel, Width
from metablocks.registry import Component, Context, Ref, register


def maxpool_out(size: int, ceil_mode: bool) -> int:
    """Output length of a 3x3 stride-2 padding-1 max pool (PyTorch's rule: a ceil-mode window may not start in the padding)."""
    if not ceil_mode:
        return (size - 1) // 2 + 1
    out = math.ceil((size - 1) / 2) + 1
    return out - 1 if (out - 1) * 2 >= size + 1 else out


class ResNetStemConfig(Component):
    layout = "channels_first"
    channels: list[Width] = Field([64], min_length=1, max_length=16)  # one conv (ResNet: 7x7, 64) or a deep stem (CCNet: 64, 64, 128)
    kernel_size: Kernel | None = None  # None: 7 for one conv, 3 for a deep stem; the first conv has stride 2
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    act: Annotated[Component, Ref("act")] = "relu"
    pool: bool = True  # the 3x3 stride-2 max pool
    ceil_mode: bool = False  # of the pool (the official CCNet backbone: True, so a 769 input gives 97x97 at stride 8)

    @property
    def kernel(self) -> int:
        return self.kernel_size or (7 if len(self.channels) == 1 else 3)

    def out_dim(self, dim: int) -> int:
        return self.channels[-1]  # the stem sets its own width, whatever the first stage's is

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        resolution = conv_out(resolution, self.kernel, 2, self.kernel // 2)  # later convs (stride 1) keep the size
        if self.pool:
            resolution = tuple(maxpool_out(r, self.ceil_mode) for r in resolution)  # type: ignore[assignment]
        return resolution

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(width)) for width in dict.fromkeys(self.channels)]

    def check(self, ctx: Context) -> list[str]:
        errors = [] if self.kernel % 2 else [f"kernel_size must be odd to keep the map centred, got {self.kernel}"]
        if ctx.resolution and min(self.out_resolution(ctx.resolution)) < 1:
            errors.append(f"input {ctx.resolution[0]}x{ctx.resolution[1]} is too small for the ResNet stem")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, channels=self.channels, kernel_size=self.kernel, norm=self.norm, act=self.act,
                           pool=self.pool, ceil_mode=self.ceil_mode)


@register("stem", "resnet", config=ResNetStemConfig)
class ResNetStem(nn.Module):
    """conv{i} -> bn{i} -> act{i} for each width in ``channels`` (the first conv strided by 2), then ``pool`` (He et al. 2016).

    Names follow timm's ResNet (``conv1``, ``bn1``) and the official CCNet deep stem (``conv1..3``, ``bn1..3``).
    """

    def __init__(self, in_chans: int, *, channels: list[int], kernel_size: int, norm: Component, act: Component,
                 pool: bool = True, ceil_mode: bool = False) -> None:
        super().__init__()
        self._names = []
        for i, (c_in, c_out) in enumerate(zip([in_chans, *channels], channels), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size, stride=2 if i == 1 else 1,
                                                  padding=kernel_size // 2, bias=False))
            self.add_module(f"bn{i}", norm.build(Context(c_out)))
            self.add_module(f"act{i}", inplace_act(act))  # after a norm
            self._names += [f"conv{i}", f"bn{i}", f"act{i}"]
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode) if pool else nn.Identity()

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the conv/bn/act sequence unrolled (metablocks/tracing.py): same submodules, same names."""
        from metablocks.tracing import unrolled

        return unrolled(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, channels[-1], H/4, W/4)
        for name in self._names:
            x = self._modules[name](x)
        return self.pool(x)
