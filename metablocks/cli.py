"""``metablocks`` command line: every module in metablocks/commands adds its own subcommand."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from metablocks import commands
from metablocks.recipe.errors import RecipeError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="metablocks", description="Composable MetaFormer blocks: recipes -> models.")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
