"""The checks a recipe runs before any tensor is allocated: every component (and every component nested in one)
against the channels and the map size it will see, the stage structure, and the resource limits.

Runs on a validated Recipe, or on the parts of a recipe that validated when the rest did not (so a schema mistake in
stage 1 does not hide a head_dim mismatch in stage 2): a part whose input depends on an invalid part is checked
without the map size it cannot know.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metablocks.recipe.errors import Problem, RecipeError, component_problems
from metablocks.recipe.schema import Recipe, StageConfig
from metablocks.recipe.yaml_io import where_of
from metablocks.registry import Component, Context, Ref


@dataclass
class Parts:
    """A recipe's parts, each None where it did not validate."""

    in_chans: int
    img_size: tuple[int, int]
    num_classes: int
    stem: Component | None
    stages: list[StageConfig | None]
    head: Component | None
    raw: Any

    @classmethod
    def of(cls, recipe: Recipe) -> Parts:
        return cls(recipe.in_chans, recipe.img_size, recipe.num_classes, recipe.stem, list(recipe.stages), recipe.head,
                   recipe._raw)

    @classmethod
    def salvage(cls, raw: Any) -> Parts:
        """The parts of an invalid recipe that validate on their own (defaults where a top-level field is invalid)."""
        def part(validate: Any, value: Any) -> Any:
            try:
                return validate(value)
            except Exception:  # reported already by the recipe's own validation
                return None

        def count(name: str, default: int) -> int:
            value = raw.get(name, default) if isinstance(raw, dict) else default
            return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**20 else default

        side = raw.get("img_size", 224) if isinstance(raw, dict) else 224
        sides = [side, side] if isinstance(side, int) else side
        ok = isinstance(sides, list) and len(sides) == 2 and all(isinstance(s, int) and 1 <= s <= 2**13 for s in sides)
        top = {"in_chans": max(count("in_chans", 3), 1), "img_size": tuple(sides) if ok else (224, 224),
               "num_classes": count("num_classes", 1000)}
        stages = raw.get("stages") if isinstance(raw, dict) else None
        return cls(top["in_chans"], top["img_size"], top["num_classes"],
                   part(Ref("stem").validate, raw.get("stem")) if isinstance(raw, dict) and "stem" in raw else None,
                   [part(StageConfig.model_validate, s) for s in stages] if isinstance(stages, list) else [],
                   part(Ref("head").validate, raw.get("head", "linear")) if isinstance(raw, dict) else None, raw)


def stem_channels(recipe: Recipe) -> int:
    """Channels out of the stem: the first stage's width, unless the stem fixes its own (ResNet: 64 into a 256-wide stage)."""
    return recipe.stem.out_dim(recipe.stages[0].dim)


def recipe_problems(parts: Parts, img_size: tuple[int, int] | None = None) -> list[Problem]:
    """Every component against the dims and map sizes it will see."""
    raw = parts.raw
    known = parts.stem is not None and bool(parts.stages) and parts.stages[0] is not None
    resolution: tuple[int, int] | None = img_size or parts.img_size
    problems: list[Problem] = []
    dim = parts.stem.out_dim(parts.stages[0].dim) if known else None  # type: ignore[union-attr]
    if parts.stem is not None and dim is not None:
        problems += component_problems(parts.stem, Context(parts.in_chans, out_dim=dim, resolution=resolution), ("stem",), raw)
        resolution = parts.stem.out_resolution(resolution)  # type: ignore[arg-type]
    else:
        resolution = None
    for i, stage in enumerate(parts.stages):
        if stage is None:  # its own problems are reported; what follows cannot know its input
            resolution, dim = None, None
            continue
        if resolution is None:  # after an invalid part: only what is wrong at any map size
            problems += _size_free_problems(stage, i, raw)
            dim = stage.dim
            continue
        problems += _cycle_problems(stage, i, raw)
        if stage.downsample is not None and dim is not None:
            ctx = Context(dim, out_dim=stage.dim, resolution=resolution, stage=i)
            problems += component_problems(stage.downsample, ctx, ("stages", i, "downsample"), raw)
            resolution = stage.downsample.out_resolution(resolution) if resolution else None
        elif stage.downsample is None and dim is not None and stage.dim != dim:
            where, path = where_of(raw, ("stages", i, "dim"))
            problems.append(Problem(where.file if where else None, where.line if where else None, path or f"stages[{i}].dim",
                                    f"stage {i} changes the width from {dim} to {stage.dim} but has no downsample"))
        if resolution is not None and min(resolution) < 1:
            break  # the downsample's own problem says why
        ctx = Context(stage.dim, resolution=resolution, stage=i)
        dim_at = ("stages", i, "dim")
        problems += component_problems(stage.norm, ctx, ("stages", i, "norm"), raw, dim_at)
        for slot in ("token_mixer", "channel_mixer"):
            cycle = getattr(stage, slot)
            for k, component in enumerate(cycle):
                if component is None:
                    continue
                loc = ("stages", i, slot) + ((k,) if len(cycle) > 1 else ())
                problems += component_problems(component, ctx, loc, raw, dim_at)
        dim = stage.dim
    if parts.head is not None and dim is not None:
        problems += component_problems(parts.head, Context(dim, out_dim=parts.num_classes, resolution=resolution),
                                       ("head",), raw)
    return list(dict.fromkeys(problems))


PROBES = ((224, 224), (210, 210))  # map sizes that tell a problem of the size (unknown here) from one at any size


def _size_free_problems(stage: StageConfig, index: int, raw: Any) -> list[Problem]:
    """The problems a stage whose input size is unknown has at every probe size: those are not about the size."""
    def at(resolution: tuple[int, int]) -> set[Problem]:
        ctx = Context(stage.dim, resolution=resolution, stage=index)
        found = set(component_problems(stage.norm, ctx, ("stages", index, "norm"), raw))
        for slot in ("token_mixer", "channel_mixer"):
            cycle = getattr(stage, slot)
            for k, component in enumerate(cycle):
                found |= set(component_problems(component, ctx, ("stages", index, slot) + ((k,) if len(cycle) > 1 else ()),
                                                raw, ("stages", index, "dim")))
        return found

    first, second = (at(r) for r in PROBES)
    return [*_cycle_problems(stage, index, raw), *(p for p in first if p in second)]


def _cycle_problems(stage: StageConfig, index: int, raw: Any) -> list[Problem]:
    """A per-block list longer than the stage would lose its extra entries: an error, not a silent cut."""
    problems = []
    for slot in ("token_mixer", "channel_mixer"):
        given = len(getattr(stage, slot))
        if given > stage.depth:
            where, path = where_of(raw, ("stages", index, slot))
            problems.append(Problem(where.file if where else None, where.line if where else None,
                                    path or f"stages[{index}].{slot}",
                                    f"lists {given} {slot}s, one per block, but stage {index} has depth {stage.depth}: "
                                    f"the last {given - stage.depth} would never be used", where.path if where else None))
    return problems


def check_recipe(recipe: Recipe, img_size: tuple[int, int] | None = None) -> None:
    """Check every component against the dims and map sizes it will see; raise RecipeError listing all problems."""
    problems = recipe_problems(Parts.of(recipe), img_size)
    if problems:
        raise RecipeError(problems)
