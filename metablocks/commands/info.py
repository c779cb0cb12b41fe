"""``metablocks info RECIPE``: per-stage table of depth, width, token and channel mixers, output shape, parameters and
MACs."""
from __future__ import annotations

import argparse
import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from metablocks.recipe import Recipe, load_recipe
from metablocks.registry import Component


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="parameters and MACs per stage of a recipe",
                                   description="Build a recipe and print, per stage, its depth, width, token and "
                                               "channel mixer(s), output shape, parameters and MACs (fvcore with "
                                               "attention/einsum handles; see metablocks.analysis), then the totals and "
                                               "the paper's numbers (only while --set leaves the architecture as "
                                               "shipped).")
    parser.add_argument("recipe", metavar="FILE|NAME", help="a recipe file or a shipped recipe name")
    parser.add_argument("--input", metavar="CxHxW", type=parse_input, default=None,
                        help="input size, e.g. 3x224x224 or 384x384 or 384 (default: the recipe's in_chans x img_size)")
    parser.add_argument("--resolved", action="store_true",
                        help="print the canonical resolved recipe (YAML) with its content hash, and exit")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="dotted override, e.g. --set stages[2].token_mixer.type=attention (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.set_defaults(func=run)


def parse_input(text: str) -> tuple[int | None, int, int]:
    """``3x224x224`` -> (3, 224, 224); ``224x160`` -> (None, 224, 160); ``224`` -> (None, 224, 224)."""
    if not re.fullmatch(r"\d+(x\d+){0,2}", text.strip()):
        raise argparse.ArgumentTypeError(f"expected CxHxW, HxW or a size, e.g. 3x224x224; given {text!r}")
    sizes = [int(s) for s in text.strip().split("x")]
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, given {text!r}")
    if len(sizes) == 1:
        return None, sizes[0], sizes[0]
    if len(sizes) == 2:
        return None, sizes[0], sizes[1]
    return sizes[0], sizes[1], sizes[2]


def describe(component: Component | None) -> str:
    """``attention(head_dim=32)``: the component's type and the fields it sets away from their defaults; a composite's
    parts described the same way (``split(parts=[channels=0.25: conv, channels=rest: identity])``)."""
    if component is None:
        return "-"
    try:
        defaults = type(component).model_validate({"type": component.name}).dump()
    except ValidationError:  # fields without a default (a composite's parts, gate's f): the rest against theirs
        required = {name for name, field in type(component).model_fields.items() if field.is_required()}
        given = {name: value for name, value in component.dump().items() if name in required}
        defaults = {name: value for name, value in type(component).model_validate({"type": component.name, **given})
                    .dump().items() if name not in required}
    changed = []
    for key, value in component.dump().items():
        if key != "type" and (key not in defaults or value != defaults[key]):
            changed.append(f"{key}={_value(getattr(component, key))}")
    return f"{component.name}({', '.join(changed)})" if changed else component.name


def _value(value: Any, part: bool = False) -> str:
    """A field's value as ``describe`` shows it: a component by name (a composite, and a composite's part, with its
    fields), lists and a composite's parts item by item."""
    if isinstance(value, Component):
        composite = any(field.is_required() for field in type(value).model_fields.values())
        return describe(value) if composite or part else value.name
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v, part=True) for v in value) + "]"
    if isinstance(value, BaseModel):  # a composite's part: channels=0.25: conv
        items = {k: getattr(value, k) for k in type(value).model_fields}
        mixer = items.pop("mixer", None)
        head = ", ".join(f"{k}={_value(v, part=True)}" for k, v in items.items())
        return f"{head}: {describe(mixer)}" if mixer is not None else head
    return str(value)


def _mixers(cycle: list[Component]) -> str:
    return " / ".join(describe(c) for c in cycle)


def _shape(*sizes: int) -> str:
    return "x".join(str(s) for s in sizes)


def table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from metablocks.analysis import count_macs, human, params_by_stage
    from metablocks.model import MetaModel
    from metablocks.recipe.checks import stem_channels

    input_overrides = []
    if args.input is not None:
        chans, height, width = args.input
        input_overrides.append(f"img_size=[{height}, {width}]")
        if chans is not None:
            input_overrides.append(f"in_chans={chans}")
    recipe = load_recipe(args.recipe, [*args.overrides, *input_overrides] or None)
    if args.resolved:
        print(f"# {recipe.name}: model_id {recipe.model_id} (content hash of the resolved architecture)")
        print(recipe.to_yaml(), end="")
        return 0
    # the paper's numbers hold for the architecture as shipped (at any input size), not for one --set changed
    changed = bool(args.overrides) and load_recipe(args.recipe, input_overrides or None).model_id != recipe.model_id

    model = MetaModel(recipe)
    input_size = (recipe.in_chans, *recipe.img_size)
    macs = count_macs(model, input_size)
    params = params_by_stage(model)
    resolution = recipe.stem.out_resolution(recipe.img_size)
    first = stem_channels(recipe)
    stages = [{"stage": "stem", "depth": None, "dim": first, "token_mixer": f"({recipe.stem.name} stem)",
               "channel_mixer": "", "output": [first, *resolution], "params": params["stem"],
               "macs": macs.by_stage["stem"]}]
    for i, (stage, module) in enumerate(zip(recipe.stages, model.stages)):
        name = f"stages.{i}"
        mixers = (f"pattern {', '.join(stage.pattern)}" if stage.pattern is not None else _mixers(stage.token_mixer))
        stages.append({"stage": name, "depth": stage.depth, "dim": stage.dim, "token_mixer": mixers,
                       "channel_mixer": _mixers(stage.channel_mixer), "output": [stage.out_dim, *module.resolution],
                       "params": params[name], "macs": macs.by_stage[name]})
    stages.append({"stage": "head", "depth": None, "dim": model.num_features, "token_mixer": f"({recipe.head.name} head)",
                   "channel_mixer": "", "output": [recipe.num_classes], "params": params["head"],
                   "macs": macs.by_stage["head"]})
    total_params = sum(params.values())
    skipped = {op.removeprefix("aten::"): n for op, n in macs.skipped_ops.items()}
    if args.json:
        print(json.dumps({"name": recipe.name, "model_id": recipe.model_id, "input": list(input_size),
                          "overrides": list(args.overrides), "architecture_changed": changed, "stages": stages,
                          "params": total_params, "macs": macs.total, "depth": sum(s.depth for s in recipe.stages),
                          "paper": None if changed else _paper_numbers(recipe), "not_counted": skipped}, indent=1))
        return 0

    rows = [["stage", "depth", "dim", "token mixer", "channel mixer", "output", "params", "MACs"]]
    for row in stages:
        rows.append([row["stage"], "-" if row["depth"] is None else str(row["depth"]), str(row["dim"]),
                     row["token_mixer"], row["channel_mixer"] or "-", _shape(*row["output"]), human(row["params"]),
                     human(row["macs"])])
    rows.append(["total", str(sum(s.depth for s in recipe.stages)), "", "", "", "", human(total_params), human(macs.total)])
    title = f"{recipe.name}" + (" (changed by --set)" if changed else "")
    print(f"{title}  (model_id {recipe.model_id}, input {_shape(*input_size)})")
    print(table(rows, right={1, 2, 6, 7}))
    print(f"total: {human(total_params)} params ({total_params:,}), {human(macs.total)} MACs ({macs.total:,}) "
          f"at {_shape(*input_size)}")
    paper = _paper_line(recipe)
    if paper and changed:
        print(f"paper: not shown: --set changed the architecture, and the paper's numbers are for {recipe.name} as "
              f"shipped (see 'metablocks info {args.recipe}')")
    elif paper:
        print(paper)
    if skipped:
        print("not counted (elementwise, pooling, reductions): " + ", ".join(f"{op} x{n}" for op, n in skipped.items()))
    return 0


def _paper_numbers(recipe: Recipe) -> dict[str, Any] | None:
    paper = recipe.paper
    numbers = {"params_m": paper.params_m, "macs_g": paper.macs_g, "top1": paper.top1}
    if all(v is None for v in numbers.values()):
        return None
    return {**numbers, "resolution": paper.resolution, "title": paper.title}


def _paper_line(recipe: Recipe) -> str | None:
    paper = recipe.paper
    numbers: list[Any] = []
    if paper.params_m is not None:
        numbers.append(f"{paper.params_m:g}M params")
    if paper.macs_g is not None:
        numbers.append(f"{paper.macs_g:g}G MACs")
    if paper.top1 is not None:
        numbers.append(f"{paper.top1:g}% top-1")
    if not numbers:
        return None
    source = f" ({paper.title})" if paper.title else ""
    h, w = paper.size
    return f"paper: {', '.join(numbers)} at {h}x{w}{source}"
