"""Hypothesis strategies for random recipes drawn from every registered component, and the rule they are held to.

Nothing here names a component: each kind's configs come from the registry, and each field is drawn from its own
type and pydantic bounds (ints and floats near the low end of their range, so models stay small enough to run in a
test; Literals, bools, nested components and optional fields from their types). A component added to
metablocks/components is fuzzed from the day it is registered.

    the rule: load_recipe accepts  =>  build_model builds, and forward + backward at img_size give finite values
"""
from __future__ import annotations

import math
import types
import typing
from typing import Any

import torch
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import metablocks
from metablocks.blocks import BLOCK_SHAPES
from metablocks.registry import KINDS, SLOT_KINDS, Component, Ref, configs

MAX_DEPTH = 2  # components nested in components nested in ...


def shipped_configs(kind: str) -> list[type[Component]]:
    """The configs metablocks registers for ``kind`` (components other tests register are theirs to test)."""
    return [cfg for cfg in configs(kind) if cfg.module.__module__.startswith("metablocks.")]


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for meta in metadata:
        if isinstance(meta, FieldInfo):
            found.update(_bounds(list(meta.metadata)))
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(meta, name, None) is not None:
                found[name] = getattr(meta, name)
    return found


def _number(kind: type, bounds: dict[str, Any]) -> st.SearchStrategy:
    lo = bounds.get("ge", bounds.get("gt", None))
    hi = bounds.get("le", bounds.get("lt", None))
    if kind is int:
        lo = (lo + 1 if "gt" in bounds else lo) if lo is not None else -4
        hi = (hi - 1 if "lt" in bounds else hi) if hi is not None else lo + 12
        return st.integers(int(lo), int(min(hi, max(lo, 0) + 12)))
    lo = -4.0 if lo is None else float(lo)
    hi = 4.0 if hi is None else float(hi)
    lo, hi = max(lo, -4.0), min(hi, max(lo, 0.0) + 4.0)  # a window near zero or near the low end
    floats = st.floats(lo, hi, allow_nan=False, allow_infinity=False,
                       exclude_min="gt" in bounds and lo == bounds["gt"], exclude_max="lt" in bounds and hi == bounds["lt"])
    # and the round values recipes use (a quarter of the channels, ratio 2), which arbitrary floats rarely hit
    round_values = [v for v in (0.25, 0.5, 0.75, 1.0, 2.0, 4.0) if lo <= v <= hi and v != bounds.get("gt")
                    and v != bounds.get("lt")]
    return st.one_of(st.sampled_from(round_values), floats) if round_values else floats


def value_for(annotation: Any, metadata: list[Any], depth: int) -> st.SearchStrategy | None:
    """A strategy for values of ``annotation`` within ``metadata``'s bounds; None when the type is not drawable."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        refs = [m for m in extra if isinstance(m, Ref)]
        if refs:
            return referenced(refs[0], depth + 1)
        return value_for(inner, [*metadata, *extra], depth)
    refs = [m for m in metadata if isinstance(m, Ref)]
    if refs:
        return referenced(refs[0], depth + 1)
    if origin in (typing.Union, types.UnionType):
        options = [value_for(arg, metadata if arg is not type(None) else [], depth) for arg in typing.get_args(annotation)]
        options = [o for o in options if o is not None]
        return st.one_of(options) if options else None
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation in (int, float):
        return _number(annotation, _bounds(metadata))
    if origin is list:
        (item,) = typing.get_args(annotation)
        inner = value_for(item, [], depth)
        bounds = _bounds(metadata)
        if inner is None:
            return None
        low = bounds.get("min_length", 0)
        return st.lists(inner, min_size=low, max_size=max(low, min(bounds.get("max_length", 3), 3)))
    if origin is tuple:
        items = [value_for(arg, [], depth) for arg in typing.get_args(annotation)]
        return st.tuples(*items) if all(i is not None for i in items) else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return fields_of(annotation, depth)
    return None


def fields_of(cls: type[BaseModel], depth: int) -> st.SearchStrategy:
    """A dict of some of ``cls``'s fields (each one drawn or left to its default)."""
    required, optional = {}, {}
    for name, field in cls.model_fields.items():
        if name == "type" or (depth > MAX_DEPTH and not field.is_required()):
            continue
        strategy = value_for(field.annotation, list(field.metadata), depth)
        if strategy is not None:
            (required if field.is_required() else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional)


def holds_components(annotation: Any) -> bool:
    """Does a value of ``annotation`` contain a component (directly, in a list, or in a nested model's fields)?"""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return any(isinstance(m, Ref) for m in extra) or holds_components(inner)
    if origin is not None:
        return any(holds_components(arg) for arg in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(holds_components(f.annotation) or any(isinstance(m, Ref) for m in f.metadata)
                   for f in annotation.model_fields.values())
    return False


def is_leaf(cfg: type[Component]) -> bool:
    """A component that can be drawn without drawing another one (no required field holds a component): what is
    drawn past MAX_DEPTH, so components made of components (split, seq, ...) do not nest without end."""
    return not any(f.is_required() and (holds_components(f.annotation) or any(isinstance(m, Ref) for m in f.metadata))
                   for f in cfg.model_fields.values())


def component(kind: str, depth: int = 0) -> st.SearchStrategy:
    """``{"type": name, ...fields}`` for any shipped component of ``kind``."""
    choices = [cfg for cfg in shipped_configs(kind) if depth <= MAX_DEPTH or is_leaf(cfg)]
    return st.sampled_from(choices).flatmap(
        lambda cfg: fields_of(cfg, depth).map(lambda fields, name=cfg.name: {"type": name, **fields}))


def referenced(ref: Ref, depth: int) -> st.SearchStrategy:
    """A component for a ``Ref`` field; one that takes several kinds (a named slot, a composite's part: a mixer, a
    norm or an act) draws from each, naming the kind (``kind:``) where the name is found in another of them too."""
    kinds = tuple(getattr(ref, "kinds", (ref.kind,)))
    if len(kinds) == 1:
        return component(kinds[0], depth)

    def named(kind: str, drawn: dict[str, Any]) -> dict[str, Any]:
        elsewhere = any(drawn["type"] in {cfg.name for cfg in configs(k)} for k in kinds if k != kind)
        return {"kind": kind, **drawn} if elsewhere else drawn

    return st.sampled_from(kinds).flatmap(lambda kind: component(kind, depth).map(lambda drawn: named(kind, drawn)))


@st.composite
def block_fields(draw: Any, depth: int) -> dict[str, Any]:
    """The fields of one block: its standard slots, and sometimes named slots, spelled-out branches of every kind
    (with drop-path and scale switches and widths), a shortcut."""
    fields: dict[str, Any] = {}
    mixers = draw(st.lists(component("token_mixer"), min_size=1, max_size=max(depth, 1)))
    fields["token_mixer"] = mixers if len(mixers) > 1 else mixers[0]
    fields["channel_mixer"] = draw(st.one_of(st.none(), component("channel_mixer")))
    fields["norm"] = draw(st.one_of(st.none(), component("norm")))
    fields["shape"] = draw(st.sampled_from(sorted(BLOCK_SHAPES)))
    for scale in ("layer_scale", "res_scale"):
        fields[scale] = draw(st.one_of(st.none(), st.floats(-2.0, 2.0)))
    fields["post_act"] = draw(st.one_of(st.none(), component("act")))
    fields["layout"] = draw(st.sampled_from([None, "channels_first", "channels_last"]))
    if draw(st.booleans()):  # the grammar: named slots, branches of every kind
        names = draw(st.lists(st.sampled_from(["cpe", "se", "pre", "gate"]), max_size=2, unique=True))
        fields["slots"] = {name: draw(referenced(Ref(SLOT_KINDS), 0)) for name in names}
        known = ["norm", "token_mixer", "channel_mixer", *names]
        branch = st.fixed_dictionaries(
            {"path": st.lists(st.sampled_from(known), min_size=1, max_size=3)},
            optional={"kind": st.sampled_from(["residual", "plain", "concat"]),
                      "drop_path": st.one_of(st.booleans(), st.sampled_from([0.25, 0.75])),
                      "layer_scale": st.booleans(), "width": st.sampled_from([0.25, 0.5, 0.75, 1.0])})
        fields["branches"] = draw(st.lists(branch, min_size=1, max_size=4))
    fields["shortcut"] = draw(st.one_of(st.none(), component("shortcut")))
    return fields


@st.composite
def recipes(draw: Any) -> dict[str, Any]:
    """A small random recipe: 1-3 stages of 0-2 blocks, widths 4-64, a 12-40 px input; block fields from
    ``block_fields``, sometimes through two templates and a pattern, per-block widths, a stride, a stage's own
    drop-path rate."""
    n = draw(st.integers(1, 3))
    dims = [draw(st.sampled_from([4, 8, 12, 16, 24, 32, 48, 64])) for _ in range(n)]
    stages = []
    for i, dim in enumerate(dims):
        depth = draw(st.sampled_from([0, 1, 1, 2, 2]))
        stage: dict[str, Any] = {"depth": depth, "dim": dim, **draw(block_fields(depth))}
        if depth == 2 and draw(st.integers(0, 3)) == 0:
            stage["dim"] = [dim, draw(st.sampled_from([4, 8, 16]))]
        if depth and draw(st.integers(0, 3)) == 0:
            stage["blocks"] = {"a": draw(block_fields(1)), "b": draw(block_fields(1))}
            stage["pattern"] = draw(st.sampled_from([["a"], ["a", "b"], ["b", "a"]]))
        if draw(st.integers(0, 3)) == 0:
            stage["drop_path_rate"] = 0.2
        if i > 0:
            stage["downsample"] = draw(st.one_of(st.none(), component("downsample")))
            if stage["downsample"] is None:
                stage["stride"] = draw(st.sampled_from([1, 1, 2]))
        # tokens: a position embedding on any stage; prefix tokens on any stage, carried by the later ones (mostly
        # the last; or a token stream without them)
        if draw(st.integers(0, 3)) == 0:
            stage["pos_embed"] = draw(component("pos_embed"))
        if draw(st.integers(0, 2 if i == n - 1 else 8)) == 0:
            stage["prefix_tokens"] = {"cls": draw(st.integers(0, 1)), "dist": draw(st.integers(0, 1)),
                                      "registers": draw(st.sampled_from([0, 0, 2]))}
        elif draw(st.integers(0, 6)) == 0:
            stage["layout"] = "tokens"
        stages.append(stage)
    head = draw(component("head"))
    if any(s.get("prefix_tokens") for s in stages) and draw(st.booleans()):  # mostly a head reading what is carried
        head = {"type": "token", "reads": draw(st.sampled_from([["cls"], ["cls", "dist"], ["mean"], ["dist", "mean"]]))}
    return {"name": "fuzz", "in_chans": draw(st.integers(1, 3)), "img_size": draw(st.sampled_from([12, 16, 24, 32, 33, 40])),
            "num_classes": draw(st.integers(0, 10)), "drop_path_rate": draw(st.sampled_from([0.0, 0.1])),
            "stem": draw(component("stem")), "stages": stages, "head": head}


def holds(raw: dict[str, Any]) -> str:
    """Apply the rule to one drawn recipe: "rejected" (a located RecipeError), or "ran" (built, forward + backward
    finite, eval forward finite). Anything else raises."""
    try:
        recipe = metablocks.load_recipe(raw)
    except metablocks.RecipeError as err:
        assert err.problems and all(p.path or p.file for p in err.problems), err
        return "rejected"
    torch.manual_seed(0)
    model = metablocks.build_model(recipe)
    x = torch.randn(2, recipe.in_chans, *recipe.img_size)
    model.train()
    out = model(x)
    assert torch.isfinite(out).all(), f"non-finite training output for {recipe.to_yaml()}"
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient of {name} for {recipe.to_yaml()}"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all(), f"non-finite eval output for {recipe.to_yaml()}"
    return "ran"


HOSTILE_VALUES = [0, -1, 1, 2, 3, 10**30, 2**31, 1e300, math.nan, math.inf, -math.inf, True, False, "bogus", "", [],
                  {}, None, [0], [1, 2, 3], {"type": "bogus"}, 0.5, -0.5, 1.5, "1e9", "layernorm"]
__all__ = ["HOSTILE_VALUES", "KINDS", "component", "holds", "recipes", "shipped_configs"]
