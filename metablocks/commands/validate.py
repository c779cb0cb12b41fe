"""``metablocks validate FILE...``: check recipes and sweep specs (schema and every component's constraints) without
building them."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metablocks.recipe import RecipeError, load_recipe

SWEEP_KEYS = ("axes", "base")  # top-level keys only a sweep spec has


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="check recipe files, sweep specs (or shipped recipe names)",
                                   description="Validate each file: YAML, schema, and every component's constraints at "
                                               "the recipe's input size. A sweep spec (a file with 'base:' or 'axes:') "
                                               "is validated as one: its fields, the base recipe, and every run it "
                                               "expands to. Prints 'ok FILE (model_id)' or every problem with its file "
                                               "and line; exits 0 only if all are valid, 2 otherwise.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="recipe or sweep YAML files, or shipped recipe names")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="dotted override applied to every recipe (for a sweep: as in 'sweep plan --set'; "
                             "repeatable)")
    parser.set_defaults(func=run)


def is_sweep_spec(source: str) -> bool:
    """Whether ``source`` is a YAML file whose top level has a sweep's keys (a recipe never has them)."""
    path = Path(source)
    if not path.is_file():
        return False
    from metablocks.recipe.yaml_io import load_file

    try:
        raw = load_file(path)
    except RecipeError:
        return False
    return isinstance(raw, dict) and any(key in raw for key in SWEEP_KEYS)


def check_sweep(source: str, overrides: list[str]) -> str:
    """A one-line summary of a valid sweep; raises RecipeError (SweepError) with every problem."""
    from metablocks.commands.sweep import load_sweep

    sweep = load_sweep(source, overrides)
    runs = sweep.plan()
    configs = len(dict.fromkeys(r.config_key for r in runs))
    invalid = {r.config_key: r.invalid for r in runs if r.invalid}
    line = f"sweep {sweep.spec.name}: {len(runs)} runs = {configs} configurations x {len(sweep.spec.seed_list)} seed(s)"
    for config, why in invalid.items():
        line += f"\n  note: {config} is rejected at {sweep.spec.data.img_size}px and will be recorded as failed: {why}"
    return line


def run(args: argparse.Namespace) -> int:
    failed, sweeps = 0, 0
    for source in args.files:
        try:
            summary: Any
            if is_sweep_spec(source):
                sweeps += 1
                summary = check_sweep(source, args.overrides)
            else:
                summary = load_recipe(source, args.overrides or None).model_id
        except RecipeError as err:
            failed += 1
            print(f"FAIL {source}\n{err}")
        else:
            print(f"ok {source} ({summary})")
    if len(args.files) > 1:
        what = "files" if sweeps else "recipes"
        print(f"{len(args.files) - failed} of {len(args.files)} {what} valid")
    return 2 if failed else 0
