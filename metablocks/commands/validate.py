"""``metablocks validate FILE...``: check recipes (schema and every component's constraints) without building them."""
from __future__ import annotations

import argparse

from metablocks.recipe import RecipeError, load_recipe


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="check recipe files (or shipped recipe names)",
                                   description="Validate each recipe: YAML, schema, and every component's constraints "
                                               "at the recipe's input size. Prints 'ok FILE (model_id)' or every problem "
                                               "with its file and line; exits 0 only if all are valid, 2 otherwise.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="recipe YAML files or shipped recipe names")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for source in args.files:
        try:
            recipe = load_recipe(source)
        except RecipeError as err:
            failed += 1
            print(f"FAIL {source}\n{err}")
        else:
            print(f"ok {source} ({recipe.model_id})")
    if len(args.files) > 1:
        print(f"{len(args.files) - failed} of {len(args.files)} recipes valid")
    return 2 if failed else 0
