"""The checks a recipe runs before any tensor is allocated: every component (and every component nested in one)
against the channels and the map size it will see, the stage structure, and the resource limits.

Runs on a validated Recipe, or on the parts of a recipe that validated when the rest did not (so a schema mistake in
stage 1 does not hide a head_dim mismatch in stage 2): a part whose input depends on an invalid part is checked
without the map size it cannot know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from metablocks.recipe.errors import Problem, RecipeError, block_problems, component_problems
from metablocks.recipe.schema import Recipe, StageConfig
from metablocks.recipe.yaml_io import where_of
from metablocks.registry import Component, Context, Ref
from metablocks.tokens import carried_prefixes


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
    return recipe.stem.out_dim(recipe.stages[0].block_dim(0))


def recipe_problems(parts: Parts, img_size: tuple[int, int] | None = None) -> list[Problem]:
    """Every component against the dims and map sizes it will see."""
    raw = parts.raw
    known = parts.stem is not None and bool(parts.stages) and parts.stages[0] is not None
    resolution: tuple[int, int] | None = img_size or parts.img_size
    problems: list[Problem] = []
    dim = parts.stem.out_dim(parts.stages[0].block_dim(0)) if known else None  # type: ignore[union-attr]
    if parts.stem is not None and dim is not None:
        problems += component_problems(parts.stem, Context(parts.in_chans, out_dim=dim, resolution=resolution), ("stem",), raw)
        resolution = parts.stem.out_resolution(resolution)  # type: ignore[arg-type]
    else:
        resolution = None
    taken = carried_prefixes(parts.stages)  # the prefix tokens each stage takes in from the stages before it
    for i, stage in enumerate(parts.stages):
        if stage is None:  # its own problems are reported; what follows cannot know its input
            resolution, dim = None, None
            continue
        problems += _carry_problems(stage, i, raw, taken[i], dim)
        if resolution is None:  # after an invalid part: only what is wrong at any map size
            problems += _size_free_problems(stage, i, raw, taken[i])
            dim = stage.out_dim
            continue
        problems += _cycle_problems(stage, i, raw)
        if stage.downsample is not None and dim is not None:
            ctx = Context(dim, out_dim=stage.block_dim(0), resolution=resolution, stage=i, prefix=taken[i])
            problems += component_problems(stage.downsample, ctx, ("stages", i, "downsample"), raw)
            resolution = stage.downsample.out_resolution(resolution) if resolution else None
            dim = stage.block_dim(0)
        if resolution is not None and min(resolution) < 1:
            break  # the downsample's own problem says why
        problems += _token_problems(stage, i, raw, dim, resolution, taken[i])
        found, resolution, dim = stage_block_problems(stage, i, raw, dim, resolution, taken[i])
        problems += found
    last = parts.stages[-1] if parts.stages else None
    carried = taken[-1] + last.prefix() if last is not None else ()
    if parts.head is not None and dim is not None:
        ctx = Context(dim, out_dim=parts.num_classes, resolution=resolution, prefix=carried,
                      layout="tokens" if carried else "channels_first")
        if carried and not getattr(type(parts.head), "reads_tokens", False):
            where, path = where_of(raw, ("head",))
            problems.append(Problem(where.file if where else None, where.line if where else None, path or "head",
                                    f"the last stage carries prefix tokens ({', '.join(dict.fromkeys(carried))}) to the "
                                    f"head, but head {parts.head.type} pools a map and would ignore them: use "
                                    f"head: {{type: token, reads: [{carried[0]}]}}"))
        else:
            problems += component_problems(parts.head, ctx, ("head",), raw)
    return list(dict.fromkeys(problems))


def _at(raw: Any, loc: tuple[Any, ...], message: str) -> Problem:
    where, path = where_of(raw, loc)
    return Problem(where.file if where else None, where.line if where else None, path or ".".join(map(str, loc)),
                   message, where.path if where else None)


def _carry_problems(stage: StageConfig, index: int, raw: Any, carried: tuple[str, ...], dim: int | None) -> list[Problem]:
    """A stage after one that put in prefix tokens carries them on: on a token stream, without a second class or
    distillation token, and across its downsample by that downsample's rule for them (or at an unchanged width)."""
    if not carried:
        return []
    problems, names = [], ", ".join(dict.fromkeys(carried))
    if stage.layout not in (None, "tokens"):
        problems.append(_at(raw, ("stages", index, "layout"),
                            f"stage {index} carries the prefix tokens ({names}) put in before it, so its blocks run on "
                            f"a token stream: layout {stage.layout} cannot carry them (write layout: tokens, or leave "
                            f"layout out)"))
    again = [name for name in ("cls", "dist") if name in carried and name in stage.prefix()]
    if again:
        problems.append(_at(raw, ("stages", index, "prefix_tokens"),
                            f"stage {index} puts in a {again[0]} token, but the {again[0]} token of an earlier stage is "
                            f"carried in already: a stream has one {again[0]} token"))
    width = stage.block_dim(0)
    if stage.downsample is not None and stage.downsample.token_mode() != "apply" and dim is not None and dim != width:
        problems.append(_at(raw, ("stages", index, "downsample"),
                            f"stage {index}'s downsample {stage.downsample.type} changes the width from {dim} to "
                            f"{width}, but has no rule for the prefix tokens ({names}) carried in from the stage "
                            f"before: they would keep width {dim}; use a downsample that projects them too "
                            f"(conv_head_pooling: PiT's depthwise-conv pooling with a linear layer for the tokens)"))
    return problems


def _token_problems(stage: StageConfig, index: int, raw: Any, dim: int | None, resolution: tuple[int, int] | None,
                    carried: tuple[str, ...]) -> list[Problem]:
    """A stage's position embedding, checked where it is added (with the carried and the stage's own prefix tokens)."""
    if stage.pos_embed is None or dim is None:
        return []
    ctx = Context(dim, resolution=resolution, stage=index, prefix=carried + stage.prefix(),
                  layout="tokens" if stage.tokens or carried else "channels_first")
    return component_problems(stage.pos_embed, ctx, ("stages", index, "pos_embed"), raw)


def _where_in_stage(stage: StageConfig, index: int, j: int) -> Any:
    """Maps a field path inside block ``j``'s config to its place in the recipe: the stage's own field, the entry of a
    per-block list, or the field of the block template the block uses."""
    template = stage.pattern[j % len(stage.pattern)] if stage.pattern is not None else None
    set_by_template = stage.blocks[template].model_fields_set if template is not None else set()

    def place(inner: tuple[Any, ...]) -> tuple[Any, ...]:
        if inner and inner[0] in set_by_template:
            return ("stages", index, "blocks", template) + inner
        if inner and inner[0] in ("token_mixer", "channel_mixer") and len(getattr(stage, inner[0])) > 1:
            return ("stages", index, inner[0], j % len(getattr(stage, inner[0]))) + inner[1:]
        return ("stages", index) + inner

    return place


def _period(stage: StageConfig) -> int:
    """Blocks 1.. repeat with this period (their configs, widths and inputs): checking one period checks them all."""
    period = 1
    for length in (len(stage.token_mixer), len(stage.channel_mixer), len(stage.pattern or [1]),
                   len(stage.dim) if isinstance(stage.dim, list) else 1):
        period = math.lcm(period, length)
    return period


def stage_block_problems(stage: StageConfig, index: int, raw: Any, dim: int | None, resolution: tuple[int, int] | None,
                         carried: tuple[str, ...] = ()) -> tuple[list[Problem], tuple[int, int] | None, int]:
    """The problems of a stage's blocks (after its downsample), taking ``dim`` channels of a ``resolution`` map (and
    the prefix tokens ``carried`` in); returns them with the stage's output size and width."""
    from metablocks.blocks import plan_block

    problems: list[Problem] = []
    if stage.depth == 0:
        if dim is not None and dim != stage.block_dim(0):
            where, path = where_of(raw, ("stages", index, "dim"))
            problems.append(Problem(where.file if where else None, where.line if where else None,
                                    path or f"stages[{index}].dim", f"stage {index} has no blocks and no downsample to "
                                    f"change the width from {dim} to {stage.block_dim(0)}"))
        return problems, resolution, stage.block_dim(0)
    incoming = dim if dim is not None else stage.block_dim(0)
    checked: set[Any] = set()
    out_resolution = resolution
    for j in range(min(stage.depth, _period(stage) + 1)):
        config, block_dim = stage.block(j), stage.block_dim(j)
        in_dim = incoming if j == 0 else stage.block_dim(j - 1)
        stride = stage.stride if j == 0 else 1
        key = (config.model_dump_json(), in_dim, block_dim, stride)
        here = resolution if j == 0 else out_resolution
        if key not in checked:
            checked.add(key)
            tokens = dict(io_layout="tokens", prefix=carried + stage.prefix()) if stage.tokens or carried else {}
            plan = plan_block(config, block_dim, in_dim=in_dim, stride=stride, resolution=here, stage=index, block=j,
                              **tokens)
            if j == 0 and stage.downsample is None and in_dim != block_dim and plan.untransitioned:
                where, path = where_of(raw, ("stages", index, "dim"))
                problems.append(Problem(where.file if where else None, where.line if where else None,
                                        path or f"stages[{index}].dim",
                                        f"stage {index} changes the width from {in_dim} to {block_dim} but has no "
                                        f"downsample, and its first block cannot change it ({plan.untransitioned})"))
                return problems, None, stage.out_dim
            problems += block_problems(config, block_dim, (), raw, in_dim=in_dim, stride=stride, resolution=here,
                                       stage=index, block=j, dim_at=("stages", index, "dim"),
                                       where_loc=_where_in_stage(stage, index, j), **tokens)
            out_resolution = plan.out_resolution
        elif j == 0:
            out_resolution = here
    return problems, out_resolution, stage.out_dim




PROBES = ((224, 224), (210, 210))  # map sizes that tell a problem of the size (unknown here) from one at any size


def _size_free_problems(stage: StageConfig, index: int, raw: Any, carried: tuple[str, ...]) -> list[Problem]:
    """The problems a stage whose input size is unknown has at every probe size: those are not about the size."""
    def at(resolution: tuple[int, int]) -> set[Problem]:
        return set(stage_block_problems(stage, index, raw, None, resolution, carried)[0])

    first, second = (at(r) for r in PROBES)
    return [*_cycle_problems(stage, index, raw), *(p for p in first if p in second)]


def _cycle_problems(stage: StageConfig, index: int, raw: Any) -> list[Problem]:
    """A per-block list longer than the stage would lose its extra entries: an error, not a silent cut."""
    problems = []
    for slot in ("token_mixer", "channel_mixer", "pattern", "dim"):
        value = getattr(stage, slot)
        given = len(value) if isinstance(value, list) else 1
        if given > max(stage.depth, 1):
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
