"""Bounded field types for recipes and component configs: what validates is what builds and runs.

Every integer a recipe gives is a strict integer (``true`` is not 1, ``3.0`` is not 3) within a range a model can
be built with; every float is finite (``.nan`` / ``.inf`` are refused by ``Component``'s config). The ranges are
wide enough for every published architecture and narrow enough that no single field can ask for terabytes:
what a *combination* of fields costs (parameters, activations) is bounded by ``metablocks.limits``.

    kernel_size: Kernel = 7          # 1 .. 255
    drop: Probability = 0.0          # [0, 1)
    ratio: Ratio = 4.0               # (0, 64]
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, core_schema

MAX_WIDTH = 65_536  # channels of any layer (the widest published layers have ~12k)
MAX_KERNEL = 255  # a kernel's side (RepLKNet's largest is 31, SLaK's 51)
MAX_STRIDE = 64
MAX_GROUPS = MAX_WIDTH
MAX_HEADS = 4_096
MAX_RATIO = 64.0  # width multipliers (MLP ratio, expansion); the largest published is 8
MAX_ITERATIONS = 16  # recurrences of an iterative mixer (CCNet's criss-cross: 2)
MAX_LEVELS = 12  # levels of a pyramid (wavelet DWT levels: 4 at most in WaveMix)
MAX_IMG_SIZE = 8_192
MAX_CLASSES = 1_000_000
MAX_SCALE = 1.0e4  # init values of learnable scales (layer scale 1e-6 .. 1, res scale 1)

Int = Annotated[int, Strict()]
Width = Annotated[int, Strict(), Field(ge=1, le=MAX_WIDTH)]
"""A number of channels."""
Kernel = Annotated[int, Strict(), Field(ge=1, le=MAX_KERNEL)]
"""A kernel's side (pool, conv)."""
Padding = Annotated[int, Strict(), Field(ge=0, le=MAX_KERNEL)]
Stride = Annotated[int, Strict(), Field(ge=1, le=MAX_STRIDE)]
Dilation = Annotated[int, Strict(), Field(ge=1, le=MAX_KERNEL)]
Groups = Annotated[int, Strict(), Field(ge=1, le=MAX_GROUPS)]
Heads = Annotated[int, Strict(), Field(ge=1, le=MAX_HEADS)]
"""A number of attention heads, or a head's width."""
Iterations = Annotated[int, Strict(), Field(ge=1, le=MAX_ITERATIONS)]
Levels = Annotated[int, Strict(), Field(ge=1, le=MAX_LEVELS)]
Ratio = Annotated[float, Field(gt=0.0, le=MAX_RATIO, allow_inf_nan=False)]
"""A width multiplier (hidden = int(ratio * dim)); a recipe whose ratio rounds to 0 channels fails its check."""
Probability = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
"""A dropout / drop-path rate: 1.0 would drop everything (and divide by 0 in drop path)."""
Eps = Annotated[float, Field(ge=1e-12, le=1.0, allow_inf_nan=False)]
"""A norm's epsilon."""
Momentum = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Scale = Annotated[float, Field(ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False)]
"""The init value of a learnable scale or shift."""


def width_problems(ratio: float, dim: int, field: str = "ratio") -> list[str]:
    """The check of a width multiplier: ``int(ratio * dim)`` must leave at least one channel."""
    return [] if int(ratio * dim) >= 1 else [f"{field}={ratio} leaves no channels at dim={dim} (int({ratio} x {dim}) = 0)"]


class _WidthOrWidths:
    """Schema of ``Widths``: one width, or a list of them (validated as one or the other, so an error names the
    value's own problem, not both alternatives)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        one, many = TypeAdapter(Width), TypeAdapter(Annotated[list[Width], Field(min_length=1, max_length=10_000)])

        def validate(value: Any) -> Any:
            try:
                return many.validate_python(value) if isinstance(value, list) else one.validate_python(value)
            except ValidationError as err:
                first = err.errors(include_url=False)[0]
                where = "".join(f"[{i}]" for i in first["loc"] if isinstance(i, int))
                raise PydanticCustomError(first["type"], "{where}{message}",
                                          {"where": f"{where}: " if where else "", "message": first["msg"]}) from None

        return core_schema.no_info_plain_validator_function(
            validate, json_schema_input_schema=core_schema.union_schema(
                [core_schema.int_schema(ge=1, le=MAX_WIDTH), core_schema.list_schema(core_schema.int_schema(ge=1, le=MAX_WIDTH),
                                                                                     min_length=1)]))


Widths = Annotated[int | list[int], _WidthOrWidths()]
"""One width, or one per block (a list that the blocks cycle through: Next-ViT's widths inside a stage)."""
