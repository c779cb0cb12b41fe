"""A whole block as a component: its branches, slots and norms, used inside another block or a composite (Next-ViT's
residual MHCA inside the NTB's concat branch; NiNformer's MLP-Mixer block inside a gate).

    {type: block, branches: [{path: [mhca], drop_path: 0.25}], slots: {mhca: {type: mhca}}}

It is checked and built through the same plan as a stage's blocks (``metablocks.blocks.plan_block``); its drop-path
rate is the enclosing block's (``Context.drop_path``), scaled by its own branches' ``drop_path``.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError, create_model, model_validator
from torch import nn

from metablocks.blocks import Block, BlockConfig, plan_block
from metablocks.registry import Component, Context, register

# a block's fields, but its layout: the stream runs in the layout the enclosing block gives it
_FIELDS = {name: (info.annotation, info) for name, info in BlockConfig.model_fields.items() if name != "layout"}


class BlockComponentConfig(create_model("_BlockFields", __base__=Component, **_FIELDS)):  # type: ignore[misc]
    changes_width = True  # its first branch can carry a transition, as any block's

    @model_validator(mode="after")
    def _is_a_block(self) -> "BlockComponentConfig":
        try:
            self.block_config()
        except ValidationError as err:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
        return self

    def block_config(self) -> BlockConfig:
        return BlockConfig(**{name: getattr(self, name) for name in _FIELDS})

    def _plan(self, ctx: Context) -> Any:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return plan_block(self.block_config(), out, in_dim=ctx.dim, stride=ctx.stride, resolution=ctx.resolution,
                          io_layout=ctx.layout, drop_path=ctx.drop_path, stage=ctx.stage, block=ctx.block)

    def check(self, ctx: Context) -> list[str]:
        return [f"{'.'.join(map(str, loc))}: {message}" for loc, message in self._plan(ctx).problems]

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        plan = self._plan(ctx)
        return [] if plan.problems else [(placed.loc, placed.component, placed.ctx) for placed in plan.placed()]

    def build(self, ctx: Context) -> nn.Module:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        return Block(out, self.block_config(), resolution=ctx.resolution, drop_path=ctx.drop_path,
                     io_layout=ctx.layout, stage=ctx.stage, block=ctx.block, in_dim=ctx.dim, stride=ctx.stride)


register("token_mixer", "block", config=BlockComponentConfig)(Block)
register("channel_mixer", "block", config=BlockComponentConfig)(Block)
