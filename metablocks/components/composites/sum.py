"""Parallel sum: the same input through several mixers, their outputs added, each with a constant scale (HAT's
hybrid attention block, window attention + 0.01 x channel attention: Chen et al., "Activating More Pixels in Image
Super-Resolution Transformer", CVPR 2023).

    sum(x) = s_1 f_1(x) + s_2 f_2(x) + ... + s_n f_n(x)

    token_mixer: {type: sum, parts: [{mixer: {type: window_attention, window_size: 16}},
                                      {mixer: {type: cab}, scale: 0.01}]}
"""
from typing import Annotated, Any

from pydantic import Field
from torch import Tensor, nn

from metablocks.components.composites import PartRef, PartModel, build_part, outer_layout, part_context, permuted
from metablocks.fields import Scale
from metablocks.registry import Component, Context, register


class SumPart(PartModel):
    mixer: Annotated[Component, PartRef("token_mixer")]
    scale: Scale = 1.0  # a constant, not learned


class ChannelSumPart(SumPart):
    mixer: Annotated[Component, PartRef("channel_mixer")]


class SumConfig(Component):
    parts: Annotated[list[SumPart], Field(min_length=2, max_length=16)]

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        outer = outer_layout(ctx)
        return [(("parts", i, "mixer"), part.mixer, part_context(part.mixer, ctx, ctx.dim, outer))
                for i, part in enumerate(self.parts)]

    def build(self, ctx: Context) -> nn.Module:
        built = [build_part(part.mixer, ctx, ctx.dim, outer_layout(ctx)) for part in self.parts]
        return Sum([m for m, _, _ in built], [part.scale for part in self.parts], perms=[p for _, _, p in built])


class ChannelSumConfig(SumConfig):
    parts: Annotated[list[ChannelSumPart], Field(min_length=2, max_length=16)]  # type: ignore[assignment]


class Sum(nn.Module):
    """sum_i scales[i] * parts[i](x)."""

    perms_in: list[list[int]]  # TorchScript: the types of the permute lists, which may be empty
    perms_out: list[list[int]]

    def __init__(self, parts: list[nn.Module], scales: list[float], *, perms: list[list[int]]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.scales = [float(s) for s in scales]
        self.perms_in = [list(p) for p in perms]  # into each part's own layout ([]: none)
        self.perms_out = [[p.index(d) for d in range(len(p))] for p in self.perms_in]  # and back

    def forward(self, x: Tensor) -> Tensor:
        total = x  # replaced by the first part's output (TorchScript wants the variable typed before the loop)
        for i, part in enumerate(self.parts):
            y = permuted(part(permuted(x, self.perms_in[i])), self.perms_out[i])
            if self.scales[i] != 1.0:
                y = y * self.scales[i]
            total = y if i == 0 else total + y
        return total

    def extra_repr(self) -> str:
        return f"scales={self.scales}"


register("token_mixer", "sum", config=SumConfig)(Sum)
register("channel_mixer", "sum", config=ChannelSumConfig)(Sum)
