"""Sequence: mixers applied one after another, ``seq(x) = f_n(... f_2(f_1(x)))``, each in its own layout with one
permute wherever two neighbours disagree (issue 11's composites; e.g. PartialNet's PAT_ch part: SRM gate, then BN,
Huang et al., "Partial Channel Network: Compute Fewer, Perform Better", 2025).

    token_mixer: {type: seq, parts: [{type: dwconv, kernel_size: 3}, {type: attention, head_dim: 32}]}
"""
from typing import Annotated, Any

from pydantic import Field
from torch import Tensor, nn

from metablocks.components.composites import PartRef, build_part, outer_layout, part_context, permuted
from metablocks.layout import permutation
from metablocks.registry import Component, Context, register


class SeqConfig(Component):
    parts: Annotated[list[Annotated[Component, PartRef("token_mixer")]], Field(min_length=1, max_length=16)]

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        found, current = [], outer_layout(ctx)
        for i, part in enumerate(self.parts):
            part_ctx = part_context(part, ctx, ctx.dim, current)
            found.append((("parts", i), part, part_ctx))
            current = part_ctx.layout
        return found

    def build(self, ctx: Context) -> nn.Module:
        outer = current = outer_layout(ctx)
        modules, perms = [], []
        for part in self.parts:
            module, current, perm = build_part(part, ctx, ctx.dim, current)
            modules.append(module)
            perms.append(perm)
        return Seq(modules, perms=perms, out_perm=list(permutation(current, outer) or ()))


class ChannelSeqConfig(SeqConfig):
    parts: Annotated[list[Annotated[Component, PartRef("channel_mixer")]], Field(min_length=1, max_length=16)]  # type: ignore[assignment]


class Seq(nn.Module):
    """parts[n-1](... parts[0](x)), with a permute before a part whose layout differs from its predecessor's."""

    perms: list[list[int]]  # TorchScript: the types of the permute lists, which may be empty
    out_perm: list[int]

    def __init__(self, parts: list[nn.Module], *, perms: list[list[int]], out_perm: list[int]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.perms = [list(p) for p in perms]
        self.out_perm = list(out_perm)
        self.same_layout = not any(self.perms) and not self.out_perm

    def forward(self, x: Tensor) -> Tensor:
        for i, part in enumerate(self.parts):
            x = part(x if self.same_layout else permuted(x, self.perms[i]))
        return x if self.same_layout else permuted(x, self.out_perm)


register("token_mixer", "seq", config=SeqConfig)(Seq)
register("channel_mixer", "seq", config=ChannelSeqConfig)(Seq)
