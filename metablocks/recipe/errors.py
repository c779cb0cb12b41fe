"""RecipeError: every mistake in a recipe, each with its file, line, field path, what was given and what is allowed."""
from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from metablocks.registry import Component, Context, Ref, did_you_mean, get


@dataclass(frozen=True)
class Problem:
    file: str | None
    line: int | None
    path: str | None
    message: str
    written_at: str | None = None  # the path where the value was written, when it reached ``path`` by inheritance

    def __str__(self) -> str:
        place = f"{self.file or '<recipe>'}:{self.line}" if self.line else (self.file or "<recipe>")
        path = f" {self.path}:" if self.path else ""
        origin = f" (set at {self.written_at})" if self.written_at and self.written_at != self.path else ""
        return f"{place}:{path} {self.message}{origin}"


class RecipeError(ValueError):
    """A recipe (or a block/sweep spec) is wrong; ``problems`` lists every mistake found, each with its place."""

    def __init__(self, problems: list[Problem]) -> None:
        # a mistake written once in ``block:`` reaches every stage: report it once, where it was written
        unique: dict[tuple, Problem] = {}
        for p in problems:
            unique.setdefault((p.file, p.line, p.written_at or p.path, p.message), p)
        problems = list(unique.values())
        self.problems = problems
        lines = [str(p) for p in problems]
        head = "invalid recipe" if len(problems) == 1 else f"invalid recipe: {len(problems)} problems"
        super().__init__(head + ":\n  " + "\n  ".join(lines))


def problems_from(errors: list[dict[str, Any]], raw: Any, model: type[BaseModel], prefix: tuple[Any, ...] = ()) -> list[Problem]:
    """Turn pydantic errors on ``raw`` (validated as ``model``) into Problems with places and plain messages."""
    from metablocks.recipe.yaml_io import where_of

    problems = []
    for error in errors:
        loc = prefix + tuple(error["loc"])
        if error["type"] == "invalid_component":
            problems += problems_from(error["ctx"]["errors"], raw, model, loc)
            continue
        where, path = where_of(raw, loc)
        problems.append(Problem(where.file if where else None, where.line if where else None, path or None,
                                _message(error, raw, loc, model), where.path if where else None))
    return problems


def _message(error: dict[str, Any], raw: Any, loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, raw, loc[:-1])
        if not loc[:-1] and model.__name__ == "Recipe":  # what a user may write on top, beside the resolved fields
            from metablocks.recipe.loader import SUGAR

            allowed += list(SUGAR)
        hint = did_you_mean(str(loc[-1]), allowed) if allowed else ""
        return f"unknown field {loc[-1]!r}{hint}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return f"missing field {loc[-1]!r}"
    message = error["msg"].removeprefix("Value error, ")  # a validator's own sentence
    if kind in ("unknown_component", "component_type", "component_missing_type", "component_kind"):
        return message
    given = error.get("input")
    if isinstance(given, (str, int, float, bool, type(None))) or (isinstance(given, (list, dict)) and len(repr(given)) < 80):
        message += f" (given: {given!r})"
    return message


def _inner(annotation: Any) -> tuple[type[BaseModel] | None, str | None]:
    """The pydantic model, or the component kind, that an annotation holds (through Optional, list, Annotated)."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, Ref):
                return None, meta.kind
        return _inner(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple):
        for arg in typing.get_args(annotation):
            found = _inner(arg)
            if found != (None, None):
                return found
    return None, None


def _fields_at(model: type[BaseModel], raw: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model (or component config) found by walking ``loc`` from ``model`` over ``raw``."""
    cls: type[BaseModel] | None = model
    node = raw
    for key in loc:
        if isinstance(key, int):
            node = node[key] if isinstance(node, list) and key < len(node) else node
            continue
        if cls is None or key not in cls.model_fields:
            return []
        node = node.get(key) if isinstance(node, dict) else None
        field = cls.model_fields[key]
        refs = [meta for meta in field.metadata if isinstance(meta, Ref)]  # pydantic moves top-level Annotated here
        cls, kind = (None, refs[0].kind) if refs else _inner(field.annotation)
        if kind is not None:
            item = node[0] if isinstance(node, list) and node else node
            name = item.get("type") if isinstance(item, dict) else item
            try:
                cls = get(kind, name)
            except (KeyError, TypeError):
                return []
    return [name for name in cls.model_fields if name != "type"] if cls else []


def validate(model: type[BaseModel], raw: Any, source: str = "<python>") -> Any:
    """``model.model_validate(raw)``, raising RecipeError with places instead of pydantic's ValidationError."""
    from metablocks.recipe.yaml_io import Where, from_plain

    if not hasattr(raw, "where"):
        raw = from_plain(raw, Where(source))
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(problems_from(err.errors(include_url=False), raw, model)) from None


def component_problems(component: Component | None, ctx: Context, loc: tuple[Any, ...], raw: Any,
                       dim_at: tuple[Any, ...] | None = None) -> list[Problem]:
    """A component's own ``check`` at ``ctx``, and those of the components nested in it (``Component.nested``), as
    Problems placed at ``loc`` in ``raw``. ``dim_at`` is where ``ctx.dim`` was written: a problem found in another
    file than that names both places. A check that raises is reported as that component's problem, not raised."""
    from metablocks.recipe.yaml_io import where_of

    if component is None:
        return []
    try:
        messages = list(component.check(ctx))
        nested = list(component.nested(ctx))
    except Exception as err:  # a bug in a (user's) component: still a located error, never a traceback
        messages, nested = [f"its check failed ({type(err).__name__}: {err}); the component's check() has a bug"], []
    problems = []
    where, path = where_of(raw, loc)
    origin = ""
    if dim_at is not None and messages:
        dim_where, dim_path = where_of(raw, dim_at)
        if (dim_where is not None and where is not None and dim_where.file != where.file and dim_where.line
                and not dim_where.file.startswith("<")):
            origin = f" [dim={ctx.dim} is set at {dim_where.file}:{dim_where.line} {dim_where.path or dim_path}]"
    for message in messages:
        problems.append(Problem(where.file if where else None, where.line if where else None, path or ".".join(map(str, loc)),
                                f"{component.kind} {component.name!r}: {message}{origin}", where.path if where else None))
    for sub_loc, sub, sub_ctx in nested:
        problems += component_problems(sub, sub_ctx, loc + tuple(sub_loc), raw)
    return problems


def check_block(config: Any, ctx: Context, source: str = "<python>", *, in_dim: int | None = None,
                stride: int = 1) -> None:
    """Raise RecipeError if a standalone block cannot be built at ``ctx`` (its structure, or a component's check)."""
    from metablocks.recipe.yaml_io import Where, from_plain

    raw = from_plain(config.model_dump(), Where(source))
    problems = block_problems(config, ctx.dim, (), raw, in_dim=in_dim, stride=stride, resolution=ctx.resolution)
    if problems:
        raise RecipeError(problems)


def block_problems(config: Any, dim: int, loc: tuple[Any, ...], raw: Any, *, in_dim: int | None = None, stride: int = 1,
                   resolution: tuple[int, int] | None = None, stage: int | None = None, block: int | None = None,
                   dim_at: tuple[Any, ...] | None = None, where_loc: Any = None, io_layout: Any = None,
                   prefix: tuple[str, ...] = ()) -> list[Problem]:
    """The problems of one block as it will be built (``metablocks.blocks.plan_block``): its structure (a transition
    nothing can carry, a missing shortcut, widths that do not add up) and every component's own check, placed at
    ``loc`` + the field inside the block. ``where_loc`` maps a field path inside the block to its place in ``raw``
    (a template's fields live under the stage's ``blocks``)."""
    from metablocks.blocks import plan_block
    from metablocks.recipe.yaml_io import where_of

    place = where_loc or (lambda inner: loc + inner)
    plan = plan_block(config, dim, in_dim=in_dim, stride=stride, resolution=resolution, stage=stage, block=block,
                      io_layout=io_layout, prefix=prefix)
    problems = []
    for inner, message in plan.problems:
        where, path = where_of(raw, place(inner))
        problems.append(Problem(where.file if where else None, where.line if where else None,
                                path or ".".join(map(str, place(inner))), message, where.path if where else None))
    for placed in plan.placed():
        problems += component_problems(placed.component, placed.ctx, place(placed.loc), raw, dim_at)
    return problems
