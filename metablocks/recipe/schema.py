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
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler, PrivateAttr, Strict,
                      WrapSerializer, field_validator)

from metablocks.blocks import BlockConfig
from metablocks.fields import MAX_CLASSES, MAX_IMG_SIZE, Probability, Width
from metablocks.registry import Component, Ref


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
    resolution: int = 224
    # what the paper's params/MACs count: the whole model ("all"), trainable parameters only ("trainable": RandFormer's
    # table lists its frozen matrices apart), the re-parameterized inference model ("deployed": RepLKNet,
    # UniRepLKNet), or the model without its classifier ("backbone": MLP-Mixer's Table 1)
    counts: Literal["all", "trainable", "deployed", "backbone"] = "all"
    note: str | None = None  # a known, explained difference between the paper's table and the official code


class StageConfig(BlockConfig):
    """One stage: an optional downsample, then ``depth`` blocks of width ``dim``."""

    depth: Annotated[int, Strict(), Field(ge=1, le=MAX_DEPTH)]
    dim: Width
    downsample: Annotated[Component, Ref("downsample")] | None = None
    token_mixer: Cycle[Annotated[Component, Ref("token_mixer")]] = ["pooling"]  # type: ignore[assignment]
    channel_mixer: Cycle[Annotated[Component, Ref("channel_mixer")] | None] = ["mlp"]  # type: ignore[assignment]

    def block(self, index: int) -> BlockConfig:
        """The config of block ``index`` of this stage (cycling through per-block lists)."""
        fields = {name: getattr(self, name) for name in BlockConfig.model_fields}
        fields["token_mixer"] = self.token_mixer[index % len(self.token_mixer)]
        fields["channel_mixer"] = self.channel_mixer[index % len(self.channel_mixer)]
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
