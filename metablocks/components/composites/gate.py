"""A gate: a linear projection of the input times any component of it, ``proj(x) * f(x)`` (NiNformer's gating unit,
where f is a whole MLP-Mixer block: Abdullah & Aydin, "NiNformer: A Network in Network Transformer with Token Mixing
as a Gating Function Generator", 2024; the gated form after gMLP, Liu et al. 2021).

    {type: gate, f: {type: block, branches: ..., token_mixer: ..., channel_mixer: ...}}

``f`` keeps the width: the gate multiplies it elementwise with ``proj(x)``. It runs in its own layout (a Relayout
around it where the gate's layout differs), the projection in the gate's (linear channels-last, 1x1 conv first).
"""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.layout import Relayout, resolve
from metablocks.registry import SLOT_KINDS, Component, Context, Ref, register


class GateConfig(Component):
    f: Annotated[Component, Ref(SLOT_KINDS)]
    bias: bool = True  # the projection's bias

    def _f_context(self, ctx: Context) -> Context:
        return Context(ctx.dim, resolution=ctx.resolution, layout=resolve(type(self.f).layout, ctx.layout),
                       stage=ctx.stage, block=ctx.block, drop_path=ctx.drop_path)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("f",), self.f, self._f_context(ctx))]

    def build(self, ctx: Context) -> nn.Module:
        f_ctx = self._f_context(ctx)
        f = self.f.build(f_ctx)
        if f_ctx.layout != ctx.layout:
            f = Relayout(f, site=ctx.layout, inner_layout=f_ctx.layout)
        return Gate(ctx.dim, f=f, bias=self.bias, channels_last=ctx.channels_last)


class Gate(nn.Module):
    """``proj(x) * f(x)``: f's output gated by a learned projection of the same input (NiNformer's MixerGatingUnit)."""

    def __init__(self, dim: int, *, f: nn.Module, bias: bool = True, channels_last: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=bias) if channels_last else nn.Conv2d(dim, dim, 1, bias=bias)
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) * self.f(x)


register("token_mixer", "gate", config=GateConfig)(Gate)
register("channel_mixer", "gate", config=GateConfig)(Gate)
