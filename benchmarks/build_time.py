"""Build time of a recipe from YAML, excluding weight init: parse + validate, and construct on the meta device.

    python benchmarks/build_time.py [NAME ...] [--repeats 20]

Without names, times the largest shipped recipe (most parameters). "Load" is YAML -> validated Recipe
(extends, overrides, pydantic, component checks); "construct" is Recipe -> MetaModel on torch's meta device,
where tensors have shapes but no storage, so no memory is allocated and no weight is initialized. Median of
``--repeats`` after one warm-up (which pays the one-time imports and registry discovery).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import metablocks
from metablocks.model import MetaModel
from metablocks.recipe.checks import check_recipe
from metablocks.recipe import load_recipe


def largest_recipe() -> tuple[str, int]:
    sizes = {}
    for name in metablocks.list_recipes():
        with torch.device("meta"):
            sizes[name] = sum(p.numel() for p in MetaModel(load_recipe(name)).parameters())
    name = max(sizes, key=sizes.get)
    return name, sizes[name]


def time_build(name: str, repeats: int) -> dict[str, float]:
    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        recipe = load_recipe(name)
        check_recipe(recipe)
        t1 = time.perf_counter()
        with torch.device("meta"):
            MetaModel(recipe)
        return t1 - t0, time.perf_counter() - t1

    once()
    runs = [once() for _ in range(repeats)]
    load, construct = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    total = statistics.median(a + b for a, b in runs)
    return dict(load_ms=1e3 * load, construct_ms=1e3 * construct, total_ms=1e3 * total,
                total_max_ms=1e3 * max(a + b for a, b in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    names = args.names
    if not names:
        name, params = largest_recipe()
        print(f"# largest shipped recipe: {name} ({params / 1e6:.1f}M parameters)")
        names = [name]
    print("| recipe | load + validate ms | construct (meta, no init) ms | total ms (max) |")
    print("|---|---|---|---|")
    for name in names:
        r = time_build(name, args.repeats)
        print(f"| {name} | {r['load_ms']:.1f} | {r['construct_ms']:.1f} | {r['total_ms']:.1f} ({r['total_max_ms']:.1f}) |")


if __name__ == "__main__":
    main()
