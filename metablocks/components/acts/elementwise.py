"""Activations (kind ``act``): elementwise, so they work in any layout and ignore the channel count."""
from __future__ import annotations

import inspect
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Scale
from metablocks.registry import Component, Context, register


class Activation(Component):
    """An elementwise activation; built without a channel count."""

    tokens = "apply"  # elementwise: the same on prefix tokens as on the map's

    def build(self, ctx: Context | None = None, *, inplace: bool = False) -> nn.Module:
        """``inplace``: the caller knows its input is a fresh tensor nobody else reads and autograd did not save
        (a conv, norm, linear or residual-sum output): activations that can (ReLU, SiLU; GELU without autograd)
        then overwrite it, saving an allocation and a pass over memory, as timm's ResNet does. Others ignore it."""
        kwargs = self.kwargs()
        if inplace and "inplace" in inspect.signature(self.module).parameters:
            kwargs["inplace"] = True
        return self.module(**kwargs)


@torch.jit.unused
def eager_inference(x: Tensor) -> bool:
    """May an op overwrite ``x``, a fresh tensor nobody else reads? Only without autograd and in eager mode
    (compilers, exporters, TorchScript and torch.fx see plain out-of-place ops and plan memory themselves)."""
    return (not torch.is_grad_enabled() and not isinstance(x, torch.fx.Proxy) and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


# TorchScript reads an unused function's signature from real types (this module's annotations are strings)
eager_inference.__annotations__ = {"x": Tensor, "return": bool}


def inplace_act(act: Component) -> nn.Module:
    """``act`` built in-place where it can be (see ``Activation.build``); a plugin's own act config as it is."""
    return act.build(inplace=True) if isinstance(act, Activation) else act.build()


class GeluConfig(Activation):
    approximate: Literal["none", "tanh"] = "none"


@register("act", "gelu", config=GeluConfig)
class GELU(nn.GELU):
    """Gaussian error linear unit (Hendrycks & Gimpel, "Gaussian Error Linear Units", 2016).

    ``inplace``: overwrite the input in eager inference (no autograd: GELU's backward needs its input), where timm
    allocates a second map: the same kernel, so the same values. An MLP's hidden map at batch 8 is 4.8 MB (DeiT-Ti),
    which glibc gives back to the system and faults in again on each block: 1182 page faults a block saved."""

    def __init__(self, approximate: str = "none", inplace: bool = False) -> None:
        super().__init__(approximate=approximate)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace and not torch.jit.is_scripting() and eager_inference(x):
            return torch._C._nn.gelu_(x, approximate=self.approximate)
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}" + (", inplace=True" if self.inplace else "")


@register("act", "relu", config=Activation)
class ReLU(nn.ReLU):
    """Rectified linear unit (Nair & Hinton, 2010)."""


@register("act", "silu", config=Activation)
class SiLU(nn.SiLU):
    """Sigmoid linear unit / Swish (Ramachandran et al., "Searching for Activation Functions", 2017)."""


@register("act", "identity", config=Activation)
class Identity(nn.Identity):
    """No activation."""


@register("act", "squared_relu", config=Activation)
class SquaredReLU(nn.Module):
    """relu(x)^2 (So et al., "Primer: Searching for Efficient Transformers", 2021)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.square(F.relu(x))


class StarReluConfig(Activation):
    scale_value: Scale = 1.0
    bias_value: Scale = 0.0
    learnable: bool = True


@register("act", "star_relu", config=StarReluConfig)
class StarReLU(nn.Module):
    """s * relu(x)^2 + b with learnable scalars s, b (Yu et al., "MetaFormer Baselines for Vision", 2022)."""

    def __init__(self, *, scale_value: float = 1.0, bias_value: float = 0.0, learnable: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), scale_value), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), bias_value), requires_grad=learnable)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias
