"""``metablocks list [recipes|components] [--kind KIND]``: the shipped recipes and the registered components."""
from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from metablocks import registry
from metablocks.registry import Component, Ref


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="shipped recipes and registered components",
                                   description="List the shipped recipes (with the paper's params/MACs and the timm "
                                               "model they match) and the registered components per kind, with their "
                                               "fields (name: type = default) and a one-line description.")
    parser.add_argument("what", nargs="?", choices=("all", "recipes", "components"), default="all")
    parser.add_argument("--kind", choices=registry.KINDS, help="only components of this kind")
    parser.add_argument("--json", action="store_true", help="print the lists as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    what = "components" if args.kind and args.what == "all" else args.what
    if args.json:
        out: dict[str, Any] = {}
        if what in ("all", "recipes"):
            out["recipes"] = recipes_data()
        if what in ("all", "components"):
            out["components"] = components_data([args.kind] if args.kind else list(registry.KINDS))
        print(json.dumps(out, indent=1))
        return 0
    if what in ("all", "recipes"):
        print(recipes_text())
    if what == "all":
        print()
    if what in ("all", "components"):
        print(components_text([args.kind] if args.kind else list(registry.KINDS)))
    return 0


def recipes_data() -> list[dict[str, Any]]:
    """One entry per shipped recipe: name, file, the paper's numbers and the timm model it matches."""
    from metablocks.recipe.loader import recipes_dir, shipped_recipes

    root = recipes_dir()
    entries = []
    for name, path in sorted(shipped_recipes().items()):
        data = provenance(path)
        paper = data.get("paper") or {}
        entries.append({"name": name, "file": str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
                        "paper": {k: paper.get(k) for k in ("params_m", "macs_g", "top1", "title")},
                        "timm_name": data.get("timm_name")})
    return entries


def components_data(kinds: list[str]) -> dict[str, list[dict[str, Any]]]:
    """kind -> its registered components: name, description, the Python module, and each field's type and default."""
    out = {}
    for kind in kinds:
        out[kind] = [{"name": cfg.name, "description": doc_line(cfg),
                      "module": f"{getattr(cfg.module, '__module__', '?')}.{getattr(cfg.module, '__qualname__', '?')}",
                      "fields": {name: {"type": field_type(field), "default": _json_default(field)}
                                 for name, field in cfg.model_fields.items() if name != "type"}}
                     for cfg in registry.configs(kind)]
    return out


def _json_default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    if isinstance(value, Component):
        return value.dump()
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def recipes_text() -> str:
    from metablocks.commands.info import table
    from metablocks.recipe.loader import recipes_dir, shipped_recipes

    rows = [["recipe", "params (M)", "MACs (G)", "top-1", "timm", "file"]]
    root = recipes_dir()
    for name, path in sorted(shipped_recipes().items()):
        data = provenance(path)
        paper = data.get("paper") or {}
        rows.append([name, _num(paper.get("params_m")), _num(paper.get("macs_g")), _num(paper.get("top1")),
                     data.get("timm_name") or "-", str(path.relative_to(root)) if path.is_relative_to(root) else str(path)])
    return f"recipes ({len(rows) - 1}), numbers from the papers:\n" + table(rows, right={1, 2, 3})


def provenance(path: Path) -> dict[str, Any]:
    """The recipe's merged top-level fields (``extends`` followed, nothing validated), {} if it cannot be read."""
    from metablocks.recipe import RecipeError
    from metablocks.recipe.loader import _flatten, load_raw

    try:
        raw, file = load_raw(path)
        return dict(_flatten(raw, file, ()))
    except RecipeError:
        return {}


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def components_text(kinds: list[str]) -> str:
    blocks = []
    for kind in kinds:
        configs = registry.configs(kind)
        lines = [f"{kind} ({len(configs)}):"]
        for cfg in configs:
            lines.append(f"  {cfg.name}  - {doc_line(cfg)}".rstrip(" -"))
            for field_name, field in cfg.model_fields.items():
                if field_name != "type":
                    lines.append(f"      {field_name}: {field_type(field)}{_default(field)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def doc_line(cfg: type[Component]) -> str:
    """The first paragraph of the component module's docstring (else of its config's own docstring), on one line."""
    module_doc = cfg.module.__dict__.get("__doc__") if isinstance(cfg.module, type) else cfg.module.__doc__
    bases = [c for c in cfg.__mro__[1:] if isinstance(c, type) and issubclass(c, Component)]
    config_doc = next((c.__dict__.get("__doc__") for c in bases if c.__dict__.get("__doc__")), None)
    if config_doc == Component.__doc__:
        config_doc = None
    paragraph = (module_doc or config_doc or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def field_type(field: FieldInfo) -> str:
    for meta in field.metadata:
        if isinstance(meta, Ref):
            return meta.kind
    return type_name(field.annotation)


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int | None``, ``act``, ``list[token_mixer]``, ``'avg' | 'max'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        ref = next((m for m in annotation.__metadata__ if isinstance(m, Ref)), None)
        return ref.kind if ref else type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f" = {field.default_factory()!r}"  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return ""
    return f" = {field.default!r}"
