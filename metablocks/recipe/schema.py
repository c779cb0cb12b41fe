"""The recipe schema (pydantic): the canonical, fully resolved form of an architecture.

What a user writes may also use ``extends:``, ``block:`` (defaults for every stage), ``stage_defaults:``
(per-stage defaults) and ``downsample:`` (the default between stages); the loader folds those into
``stages`` before validation, so a resolved recipe lists every field of every stage.
"""
from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (BaseModel, ValidationError, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler, PlainSerializer, PrivateAttr,
                      Strict, StringConstraints, WrapSerializer, field_validator, model_serializer, model_validator)

from metablocks.blocks import NEW_BLOCK_FIELDS, BlockConfig
from metablocks.fields import MAX_CLASSES, MAX_IMG_SIZE, Probability, Stride, Width, Widths
from metablocks.registry import Component, Ref, did_you_mean
from metablocks.tokens import PrefixTokensConfig


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def _unwrap_single(value: Any, handler: Any) -> Any:
    out = handler(value)
    return out[0] if len(out) == 1 else out


class _OneOrList:
    """JSON Schema of a Cycle: one value or a list of them (the validator wraps a single value in a list)."""

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        listed = handler(schema)
        return {"anyOf": [listed["items"], listed]}


MAX_STAGES = 256
MAX_DEPTH = 10_000  # blocks in one stage (the deepest published stages have ~50)
ImgSide = Annotated[int, Strict(), Field(ge=1, le=MAX_IMG_SIZE)]

T = TypeVar("T")
Cycle = Annotated[list[T], BeforeValidator(_as_list), WrapSerializer(_unwrap_single), Field(min_length=1), _OneOrList()]
"""One value for every block of a stage, or a list that the blocks cycle through (Swin: [window, shifted])."""


class Paper(BaseModel):
    """Provenance: the paper a recipe reproduces and its reported numbers for this size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = None
    url: str | None = None
    params_m: float | None = None  # millions of parameters, as in the paper's table
    macs_g: float | None = None  # GMACs at ``resolution``, as in the paper's table
    top1: float | None = None  # ImageNet-1k top-1 (%)
    resolution: int | tuple[ImgSide, ImgSide] = 224  # the table's input side, or (H, W) for a non-square input (re-ID)
    # what the paper's params/MACs count: the whole model ("all"), trainable parameters only ("trainable": RandFormer's
    # table lists its frozen matrices apart), the re-parameterized inference model ("deployed": RepLKNet,
    # UniRepLKNet), or the model without its classifier ("backbone": MLP-Mixer's Table 1)
    counts: Literal["all", "trainable", "deployed", "backbone"] = "all"
    note: str | None = None  # a known, explained difference between the paper's table and the official code

    @property
    def size(self) -> tuple[int, int]:
        """The table's input as (H, W)."""
        return (self.resolution, self.resolution) if isinstance(self.resolution, int) else tuple(self.resolution)

    @property
    def size_text(self) -> str:
        """``224`` for a square input, ``256x128`` otherwise (how the zoo table and ``info`` print it)."""
        h, w = self.size
        return str(h) if h == w else f"{h}x{w}"


class BlockTemplate(BlockConfig):
    """A named block template: the block fields it sets override the stage's, for the blocks that use it. Its paths
    may name the stage's slots: they are checked on the merged block (``StageConfig``)."""

    @model_validator(mode="after")
    def _paths_name_slots(self) -> BlockTemplate:
        return self


def _template(value: BlockConfig) -> dict[str, Any]:
    return value.model_dump(mode="json", exclude_unset=True)


Template = Annotated[BlockTemplate, PlainSerializer(_template)]
"""A named block template: the block fields it sets override the stage's for the blocks that use it."""
TemplateName = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=40)]
NEW_STAGE_FIELDS: dict[str, Any] = {"stride": 1, "pattern": None, "blocks": {}, "drop_path_rate": None,
                                    "prefix_tokens": None, "pos_embed": None}
"""Stage fields added after recipes were published: left out of dumps at their default, so model_ids stay."""


class StageConfig(BlockConfig):
    """One stage: an optional downsample, then ``depth`` blocks of width ``dim`` (one width, or one per block)."""

    depth: Annotated[int, Strict(), Field(ge=0, le=MAX_DEPTH)]
    dim: Widths
    downsample: Annotated[Component, Ref("downsample")] | None = None
    stride: Stride = 1  # of the stage's first block (its first branch carries it; see blocks.py)
    token_mixer: Cycle[Annotated[Component, Ref("token_mixer")]] = ["pooling"]  # type: ignore[assignment]
    channel_mixer: Cycle[Annotated[Component, Ref("channel_mixer")] | None] = ["mlp"]  # type: ignore[assignment]
    blocks: dict[TemplateName, Template] = Field(default_factory=dict, max_length=64)  # named block templates
    pattern: Cycle[TemplateName] | None = None  # the templates the blocks cycle through (Next-ViT: [ncb]*4 + [ntb])
    drop_path_rate: Probability | None = None  # this stage's own drop-path schedule: linspace(0, rate, depth)
    # tokens put before the map's at the stage's start (ViT's cls, DeiT's dist, registers): the stage runs on a token
    # stream (B, P + H*W, C) and carries them to the head (metablocks/tokens.py)
    prefix_tokens: PrefixTokensConfig | None = None
    pos_embed: Annotated[Component, Ref("pos_embed")] | None = None  # added after the prefix tokens are put in

    @property
    def tokens(self) -> bool:
        """Do the blocks run on a token stream (prefix tokens put in here, or ``layout: tokens``)? A stage after one
        that put some in is a token stage too: it carries them (``tokens.carried_prefixes``)."""
        return self.layout == "tokens" or bool(self.prefix())

    def prefix(self) -> tuple[str, ...]:
        """The prefix tokens this stage puts in, in stream order."""
        return self.prefix_tokens.names() if self.prefix_tokens is not None else ()

    @model_validator(mode="after")
    def _pattern_names_templates(self) -> StageConfig:
        if self.pattern is not None:
            unknown = [name for name in self.pattern if name not in self.blocks]
            if unknown:
                known = ", ".join(self.blocks) or "none (define them under blocks:)"
                raise ValueError(f"pattern names block template {unknown[0]!r}"
                                 f"{did_you_mean(unknown[0], list(self.blocks))}, which is not defined; templates: {known}")
        elif self.blocks:
            raise ValueError(f"defines block templates ({', '.join(self.blocks)}) but no pattern: uses them; add "
                             f"pattern: [{next(iter(self.blocks))}, ...]")
        for name in self.blocks if self.pattern is not None else ():
            try:
                self._merged(self.blocks[name], self.token_mixer[0], self.channel_mixer[0])
            except ValidationError as err:
                raise ValueError(f"block template {name!r} on this stage: "
                                 + "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None
        return self

    @model_serializer(mode="wrap")
    def _omit_new_stage_defaults(self, handler: Any) -> Any:
        dumped = handler(self)
        for name in NEW_BLOCK_FIELDS:
            if name in dumped and dumped[name] in ({}, None):
                del dumped[name]
        for name, default in NEW_STAGE_FIELDS.items():
            if name in dumped and dumped[name] == default:
                del dumped[name]
        return dumped

    @property
    def out_dim(self) -> int:
        """The stage's output width: its last block's (its one width when all blocks share it)."""
        return self.block_dim(self.depth - 1) if self.depth else self.block_dim(0)

    def block_dim(self, index: int) -> int:
        """The width of block ``index`` (a per-block list cycles)."""
        return self.dim[index % len(self.dim)] if isinstance(self.dim, list) else self.dim

    def components(self) -> list[Component]:
        """Every component written in this stage's blocks (all cycle entries, slots and templates; not the downsample)."""
        found: list[Component | None] = [self.norm, *self.token_mixer, *self.channel_mixer, *self.slots.values(),
                                         self.shortcut]
        for template in self.blocks.values():
            found += [getattr(template, name) for name in ("norm", "token_mixer", "channel_mixer", "shortcut")
                      if name in template.model_fields_set]
            found += list(template.slots.values())
        return [c for c in found if c is not None]

    def block(self, index: int) -> BlockConfig:
        """The config of block ``index`` of this stage (cycling through per-block lists and the pattern)."""
        template = self.blocks[self.pattern[index % len(self.pattern)]] if self.pattern is not None else None
        return self._merged(template, self.token_mixer[index % len(self.token_mixer)],
                            self.channel_mixer[index % len(self.channel_mixer)])

    def _merged(self, template: BlockConfig | None, token_mixer: Component, channel_mixer: Component | None) -> BlockConfig:
        fields = {name: getattr(self, name) for name in BlockConfig.model_fields}
        fields["token_mixer"], fields["channel_mixer"] = token_mixer, channel_mixer
        if template is not None:
            fields.update({name: getattr(template, name) for name in template.model_fields_set})
        return BlockConfig(**fields)


class Recipe(BaseModel):
    """An architecture: stem -> stages -> head, every default filled in."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    name: str
    description: str | None = None
    paper: Paper = Paper()
    timm_name: str | None = None  # the timm model this recipe reproduces, weight for weight
    in_chans: Width = 3
    img_size: tuple[ImgSide, ImgSide] = (224, 224)
    num_classes: Annotated[int, Strict(), Field(ge=0, le=MAX_CLASSES)] = 1000
    drop_path_rate: Probability = 0.0
    stem: Annotated[Component, Ref("stem")]
    stages: list[StageConfig] = Field(min_length=1, max_length=MAX_STAGES)
    head: Annotated[Component, Ref("head")] = "linear"

    _raw: Any = PrivateAttr(default=None)  # the merged YAML with positions, for errors found later

    @field_validator("img_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

    def dump(self) -> dict[str, Any]:
        """The canonical resolved form as plain data (what ``metablocks info --resolved`` prints)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False, default_flow_style=None, width=120)

    @property
    def model_id(self) -> str:
        """Content hash of the architecture (name and provenance excluded): equal ids build equal models."""
        arch = self.model_dump(mode="json", exclude={"name", "description", "paper", "timm_name"})
        return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
