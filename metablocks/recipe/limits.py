"""Resource limits a recipe is held to before anything is allocated: blocks, parameters, the largest activation.

A recipe's cost is known from the recipe: the model is built on the meta device (no memory, no init) and one image
is run through it there, so the parameter count and the size of every intermediate tensor are exact. A recipe over a
limit is a RecipeError that says its size and how to lift the limit:

    METABLOCKS_MAX_PARAMS=20e9 metablocks validate huge.yaml        # or, in Python:
    with metablocks.limits(params=20e9): model = build_model("huge.yaml")
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Any, Iterator

from metablocks.recipe.errors import Problem

_ENV = {"params": "METABLOCKS_MAX_PARAMS", "activation": "METABLOCKS_MAX_ACTIVATION", "blocks": "METABLOCKS_MAX_BLOCKS"}


@dataclass(frozen=True)
class Limits:
    params: int = 10_000_000_000  # parameters (40 GB in fp32); the largest shipped recipe has 207M
    activation: int = 1_000_000_000  # elements of the largest tensor in the forward pass of one image (4 GB in fp32)
    blocks: int = 10_000  # blocks in the whole model


_override: Limits | None = None


def current() -> Limits:
    """The limits in force: ``limits(...)`` if inside one, else the environment's METABLOCKS_MAX_*, else the defaults."""
    if _override is not None:
        return _override
    values: dict[str, int] = {}
    for field, var in _ENV.items():
        if os.environ.get(var):
            try:
                values[field] = int(float(os.environ[var]))
            except ValueError:
                raise ValueError(f"{var}={os.environ[var]!r} is not a number") from None
    return Limits(**values)


@contextlib.contextmanager
def limits(**caps: float) -> Iterator[Limits]:
    """Raise (or lower) limits for the recipes loaded inside: ``with limits(params=20e9, activation=4e9): ...``."""
    global _override
    previous = _override
    _override = replace(current(), **{k: int(v) for k, v in caps.items()})
    try:
        yield _override
    finally:
        _override = previous


def _place(recipe: Any, loc: tuple[Any, ...]) -> tuple[str | None, int | None, str | None]:
    from metablocks.recipe.yaml_io import where_of

    where, path = where_of(recipe._raw, loc)
    return (where.file if where else None), (where.line if where else None), path or None


def limit_problems(recipe: Any) -> list[Problem]:
    """The limits ``recipe`` exceeds (empty when it fits), found without allocating memory."""
    caps = current()
    blocks = sum(stage.depth for stage in recipe.stages)
    if blocks > caps.blocks:
        file, line, path = _place(recipe, ("stages",))
        return [Problem(file, line, path, f"the model has {blocks:,} blocks, more than the limit of {caps.blocks:,} "
                                          f"(raise it with METABLOCKS_MAX_BLOCKS or metablocks.limits(blocks=...))")]
    params, activation, where = measure(recipe)
    problems = []
    if params > caps.params:
        file, line, path = _place(recipe, ("stages",))
        problems.append(Problem(file, line, path, f"the model has {params:,} parameters ({params * 4 / 2**30:,.1f} GiB in "
                                                  f"fp32), more than the limit of {caps.params:,} (raise it with "
                                                  f"METABLOCKS_MAX_PARAMS or metablocks.limits(params=...))"))
    if activation > caps.activation:
        file, line, path = _place(recipe, ("img_size",))
        problems.append(Problem(file, line, path, f"one {recipe.img_size[0]}x{recipe.img_size[1]} image makes a tensor of "
                                                  f"{activation:,} elements ({activation * 4 / 2**30:,.1f} GiB in fp32) "
                                                  f"in {where}, more than the limit of {caps.activation:,} (raise it with "
                                                  f"METABLOCKS_MAX_ACTIVATION or metablocks.limits(activation=...))"))
    return problems


def measure(recipe: Any) -> tuple[int, int, str]:
    """(parameters, elements of the largest activation, the module that makes it) of ``recipe``, on the meta device."""
    import torch

    from metablocks.model import MetaModel

    with torch.device("meta"):
        model = MetaModel(recipe)
    params = sum(p.numel() for p in model.parameters())
    largest = [0, "the input"]

    def record(module: Any, inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor) and t.numel() > largest[0]:
                largest[0], largest[1] = t.numel(), names.get(id(module), type(module).__name__)

    names = {id(m): name or "the model" for name, m in model.named_modules()}
    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, recipe.in_chans, *recipe.img_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return params, int(largest[0]), str(largest[1])
