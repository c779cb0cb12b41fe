"""Channel split: the channels cut into parts, each part through its own mixer, the results concatenated in order
(FasterNet's partial convolution, Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks",
CVPR 2023; PartialNet's partial attention convolution, Huang et al., "Partial Channel Network: Compute Fewer,
Perform Better", 2025).

    x = [x_1 | x_2 | ... | x_n]  (channels)      split(x) = [f_1(x_1) | f_2(x_2) | ... | f_n(x_n)]

    token_mixer: {type: split, parts: [{channels: 0.25, mixer: {type: conv, kernel_size: 3}},
                                        {channels: rest, mixer: identity}]}

A part's ``channels`` is a fraction of the width (``int(fraction * dim)``, FasterNet's ``dim // n_div``), a number of
channels, or ``rest`` (what the other parts leave). Each part's mixer is checked and built at its part's width.
"""
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from metablocks.components.composites import PartRef, PartModel, build_part, outer_layout, part_context, permuted
from metablocks.fields import MAX_WIDTH, Width
from metablocks.registry import Component, Context, register

Fraction = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
"""A share of the channels, in (0, 1)."""


def _one_message(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One plain error for a part's ``channels`` (pydantic would report each member of the union apart)."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("split_channels", "channels takes a fraction of the width in (0, 1), a number of "
                                  "channels (1 to {most}) or 'rest'", {"most": MAX_WIDTH}) from None


Channels = Annotated[Fraction | Width | Literal["rest"], WrapValidator(_one_message)]


class SplitPart(PartModel):
    channels: Channels
    mixer: Annotated[Component, PartRef("token_mixer")] = "identity"


class ChannelSplitPart(SplitPart):
    mixer: Annotated[Component, PartRef("channel_mixer")] = "identity"


def _share(channels: float | int | str, dim: int) -> str:
    return f"{channels} x {dim}" if isinstance(channels, float) else str(channels)


class SplitConfig(Component):
    parts: Annotated[list[SplitPart], Field(min_length=2, max_length=16)]

    def widths(self, dim: int) -> list[int]:
        """Channels of each part at width ``dim`` (``rest`` takes what the others leave; it may come out < 1)."""
        fixed = [None if p.channels == "rest" else p.channels if isinstance(p.channels, int) else int(p.channels * dim)
                 for p in self.parts]
        rest = dim - sum(f for f in fixed if f is not None)
        return [rest if f is None else f for f in fixed]

    def check(self, ctx: Context) -> list[str]:
        rests = [i for i, p in enumerate(self.parts) if p.channels == "rest"]
        if len(rests) > 1:
            return [f"at most one part may take the rest of the channels; parts {', '.join(map(str, rests))} do"]
        errors = []
        widths = self.widths(ctx.dim)
        for i, (part, width) in enumerate(zip(self.parts, widths)):
            if part.channels != "rest" and width < 1:
                errors.append(f"part {i} gets no channels at dim={ctx.dim} (int({_share(part.channels, ctx.dim)}) = 0)")
        taken = sum(w for i, w in enumerate(widths) if i not in rests)
        given = " + ".join(f"{w} ({p.channels})" if isinstance(p.channels, float) else str(w)
                           for p, w in zip(self.parts, widths) if p.channels != "rest")
        if rests and taken >= ctx.dim:
            errors.append(f"the rest is empty: the other parts take {given} = {taken} of dim={ctx.dim} channels")
        if not rests and taken != ctx.dim:
            errors.append(f"the parts take {given} = {taken} channels but dim={ctx.dim}; give them a total of "
                          f"{ctx.dim}, or let one part take the rest (channels: rest)")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        if self.check(ctx):  # the parts' widths are not known
            return []
        outer = outer_layout(ctx)
        return [(("parts", i, "mixer"), part.mixer, part_context(part.mixer, ctx, width, outer))
                for i, (part, width) in enumerate(zip(self.parts, self.widths(ctx.dim)))]

    def build(self, ctx: Context) -> nn.Module:
        outer = outer_layout(ctx)
        built = [build_part(part.mixer, ctx, width, outer) for part, width in zip(self.parts, self.widths(ctx.dim))]
        return Split([m for m, _, _ in built], self.widths(ctx.dim), perms=[p for _, _, p in built],
                     channels_last=outer == "channels_last")


class ChannelSplitConfig(SplitConfig):
    parts: Annotated[list[ChannelSplitPart], Field(min_length=2, max_length=16)]  # type: ignore[assignment]


class Split(nn.Module):
    """[f_1(x_1) | ... | f_n(x_n)] over a channel split; ``parts[i]`` is the i-th part's mixer."""

    perms_in: list[list[int]]  # TorchScript: the types of the permute lists, which may be empty
    perms_out: list[list[int]]

    def __init__(self, parts: list[nn.Module], widths: list[int], *, perms: list[list[int]],
                 channels_last: bool = False) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.widths = list(widths)
        self.axis = 3 if channels_last else 1
        self.perms_in = [list(p) for p in perms]  # into each part's own layout ([]: none)
        self.perms_out = [[p.index(d) for d in range(len(p))] for p in self.perms_in]  # and back
        self.same_layout = not any(self.perms_in)
        self.passthrough = [isinstance(part, nn.Identity) for part in parts]  # identity mixers and acts

    def forward(self, x: Tensor) -> Tensor:
        pieces = x.split(self.widths, dim=self.axis)
        outs: list[Tensor] = []
        for i, part in enumerate(self.parts):
            if self.passthrough[i]:  # an identity part: its channels as they are, no module call
                outs.append(pieces[i])
            elif self.same_layout:  # no permute anywhere: the plain loop (batch 1 is bound by Python's overhead)
                outs.append(part(pieces[i]))
            else:
                outs.append(permuted(part(permuted(pieces[i], self.perms_in[i])), self.perms_out[i]))
        return torch.cat(outs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"widths={self.widths}"


register("token_mixer", "split", config=SplitConfig)(Split)
register("channel_mixer", "split", config=ChannelSplitConfig)(Split)
