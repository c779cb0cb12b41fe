"""Composite components: components made of components (issue 11).

A composite is an ordinary component whose fields hold other components (``Annotated[Component, Ref(kind)]``), so
the registry validates its parts, ``nested(ctx)`` hands each part to the recipe checks at the width and layout it
will really see, and the random-recipe property test draws it like any other; the builder has no special case.

    split  x -> cat[f_1(x_1), ..., f_n(x_n)]   channels cut into parts (FasterNet's PConv, PartialNet's PATConv)
    sum    x -> sum_i s_i * f_i(x)             parallel mixers, each with a constant scale (HAT: attn + 0.01 CAB)
    seq    x -> f_n(...f_1(x))                  mixers one after another

Each part runs in its own channel layout: a part that works in a layout other than the composite's is shown its
input permuted and its output permuted back (no wrapper module, so state_dict names are ``parts.<i>.<...>``).
"""
# no ``from __future__ import annotations``: TorchScript reads the modules' attribute annotations as types
import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic_core import PydanticCustomError, core_schema
from torch import Tensor, nn

from metablocks.layout import permutation, resolve
from metablocks.registry import SLOT_KINDS, Component, Context, Layout, Ref, names

PART_KINDS = SLOT_KINDS  # what maps a (B, C, H, W) map to one of the same shape: a mixer, a norm, an act


class PartRef(Ref):
    """A composite's part: a component of any kind that keeps the map's shape (a mixer of either kind, a norm, an
    act), looked up in the composite's own kind first, so ``identity`` in a token mixer's split is the identity token
    mixer; ``kind:`` beside ``type:`` picks another (``{kind: act, type: identity}``).

    Its JSON Schema is a reference to one definition per kind (a composite holds composites: inlined, it would
    never end)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # the kind it is named by (the first it looks a name up in)
        self.kinds = (kind, *(k for k in PART_KINDS if k != kind))

    def validate(self, value: Any) -> Component:
        if isinstance(value, Component):
            if value.kind not in self.kinds:
                raise PydanticCustomError("component_kind", "expected a {kind}, got the {given} {name}",
                                          {"kind": " or ".join(self.kinds), "given": value.kind, "name": repr(value.name)})
            return value
        if isinstance(value, dict) and "kind" in value:
            kind = value["kind"]
            if kind not in self.kinds:
                raise PydanticCustomError("component_kind", "kind {given} cannot be a part here; allowed: {allowed}",
                                          {"given": repr(kind), "allowed": ", ".join(self.kinds)})
            return Ref(kind).validate({k: v for k, v in value.items() if k != "kind"})
        name = value if isinstance(value, str) else value.get("type") if isinstance(value, dict) else None
        kind = next((k for k in self.kinds if isinstance(name, str) and name in names(k)), self.kind)
        return Ref(kind).validate(value)

    def serialize(self, value: Any) -> Any:
        if not isinstance(value, Component):
            return value
        first = next(k for k in self.kinds if value.name in names(k))  # the kind the name alone resolves to
        return value.dump() if first == value.kind else {"kind": value.kind, **value.dump()}

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        picked = {"type": "object", "required": ["kind", "type"], "description": "a part of another kind, named",
                  "properties": {"kind": {"enum": list(self.kinds)}, "type": {"type": "string"}}}
        return {"anyOf": [*(kind_definition(kind, schema, handler) for kind in self.kinds), picked]}


def kind_definition(kind: str, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
    """``{"$ref": ...}`` to the JSON Schema of "any component of ``kind``", defined once per schema (the first use
    defines it; a use inside it, a composite in a composite, refers to it)."""
    generator = getattr(handler, "generate_json_schema", None)
    if generator is None:  # not pydantic's own generator: Ref's own (loose where it nests)
        return Ref(kind).__get_pydantic_json_schema__(schema, handler)
    core_ref = f"{kind}:any-component"  # pydantic names the definition by what comes before the colon
    started = (core_ref, generator.mode) in generator.core_to_defs_refs
    defs_ref, reference = generator.get_cache_defs_ref_schema(core_ref)
    if not started:  # Ref's full union (past its guard against nesting: the reference above ends the recursion)
        generator.definitions[defs_ref] = Ref(kind)._json_schema(schema, handler)
    return reference

Perm = list[int]  # a permute's dims; [] for none (TorchScript keeps List[List[int]] attributes)


class PartModel(BaseModel):
    """Base of a composite's part entries (``{channels: 0.25, mixer: ...}``): strict like a component config."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("channels", "scale"):
                if isinstance(data.get(name), bool):
                    raise PydanticCustomError("bool_number", "{field} takes a number, given the boolean {given}",
                                              {"field": name, "given": str(data[name]).lower()})
        return data


def outer_layout(ctx: Context) -> Layout:
    """The layout the composite itself is built for (the block's stream, for a layout-agnostic component)."""
    return resolve(ctx.layout, "channels_first")


def part_context(component: Component, ctx: Context, dim: int, current: Layout) -> Context:
    """The context a part is checked and built in: its own width, and its own layout (``current`` when it has none)."""
    return dataclasses.replace(ctx, dim=dim, out_dim=None, stride=1, layout=resolve(type(component).layout, current))


def build_part(component: Component, ctx: Context, dim: int, current: Layout) -> tuple[nn.Module, Layout, Perm]:
    """Build one part for ``dim`` channels; returns (module, its layout, the permute into it from ``current``)."""
    part_ctx = part_context(component, ctx, dim, current)
    return component.build(part_ctx), part_ctx.layout, list(permutation(current, part_ctx.layout) or ())


def permuted(x: Tensor, perm: Perm) -> Tensor:
    return x.permute(perm) if len(perm) > 0 else x
