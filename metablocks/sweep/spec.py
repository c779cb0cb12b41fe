"""Sweep specs: a base recipe, axes over recipe fields by path, seeds, and shared data/training/measurement settings.

    name: mixer_ablation
    base: recipe.yaml                      # a recipe file (relative to this file), a shipped name, or a mapping
    axes:
      - path: stages[2:].token_mixer       # any recipe path; [i] and [a:b] index lists (one or several stages)
        values: [pooling, sepconv, {type: attention, head_dim: 16}]
    mode: grid                             # grid (every combination), zip (i-th values together), random (samples)
    seeds: [0, 1]
    data: {source: digits, img_size: 32}
    train: {epochs: 5}
    measure: {batch_size: 64, rounds: 5}   # timed after training, alternating with the first configuration

Paths starting with ``train.`` or ``data.`` vary those settings instead of the recipe. Mistakes are reported like a
recipe's: file, line and field, all at once.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from metablocks.data import DataConfig
from metablocks.recipe.errors import Problem, RecipeError, problems_from, validate
from metablocks.recipe.yaml_io import Doc, DocList, Where, from_plain, load_file
from metablocks.train.config import MeasureConfig, TrainConfig

SETTINGS = ("train", "data")
SETTING_MODELS = {"train": TrainConfig, "data": DataConfig}
PLACED = "placed_checks"  # validation context: leave cross-field checks to Sweep.load, which places them


class SweepError(RecipeError):
    """A sweep spec is wrong; ``problems`` lists every mistake with its file, line and field."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        lines = "\n  ".join(str(p) for p in problems)
        head = "invalid sweep" if len(problems) == 1 else f"invalid sweep: {len(problems)} problems"
        self.args = (f"{head}:\n  {lines}",)


class Axis(BaseModel):
    """One dimension of the sweep: the value(s) set at ``path`` (one path, or several set together)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | list[str]
    values: list[Any] = Field(min_length=1)
    name: str | None = None  # the column name in results (default: the path's last field, e.g. token_mixer)
    labels: list[str] | None = None  # one short label per value (default: a component's type, else the value)

    @model_validator(mode="after")
    def _labels_match(self, info: ValidationInfo) -> Axis:
        problems = self.problems()
        if problems and not (info.context or {}).get(PLACED):
            raise ValueError("; ".join(message for _, message in problems))
        return self

    def problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """(place within the axis, message) for every inconsistency."""
        if self.labels is None:
            return []
        if len(self.labels) != len(self.values):
            return [(("labels",), f"labels gives {len(self.labels)} labels for {len(self.values)} values")]
        if len(set(self.labels)) != len(self.labels):
            return [(("labels",), f"labels must be distinct, given {self.labels}")]
        return []

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def column(self) -> str:
        if self.name:
            return self.name
        last = self.paths[0].rsplit(".", 1)[-1]
        return last.split("[", 1)[0] or self.paths[0]

    def label(self, index: int) -> str:
        if self.labels is not None:
            return self.labels[index]
        value = self.values[index]
        if isinstance(value, dict) and "type" in value:
            extra = {k: v for k, v in value.items() if k != "type"}
            return value["type"] + (("(" + ",".join(f"{k}={v}" for k, v in extra.items()) + ")") if extra else "")
        return str(value)


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    group_by: str | None = None  # the column whose values get one marker each in plots (default: the first axis)


class SweepSpec(BaseModel):
    """A whole sweep: what to vary, how to combine it, and the settings every run shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    base: str | dict[str, Any]
    overrides: dict[str, Any] = {}  # recipe paths set in every run (before the axes)
    axes: list[Axis] = []
    mode: Literal["grid", "zip", "random"] = "grid"
    samples: int | None = Field(None, ge=1)  # random mode: how many combinations to draw from the grid
    sample_seed: int = 0
    seeds: list[int] | None = None  # training seeds; every combination runs once per seed
    repeats: int | None = Field(None, ge=1)  # shorthand for seeds [0, 1, ..., repeats - 1]
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    measure: MeasureConfig = MeasureConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> SweepSpec:
        problems = self.problems()
        if problems and not (info.context or {}).get(PLACED):
            raise ValueError("; ".join(message for _, message in problems))
        return self

    def problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """(place in the spec, message) for every inconsistency between fields (``Sweep.load`` reports them all
        with file and line; constructing a SweepSpec in Python raises on them)."""
        out: list[tuple[tuple[Any, ...], str]] = []
        for i, axis in enumerate(self.axes):
            out += [(("axes", i, *loc), message) for loc, message in axis.problems()]
        if self.seeds is not None and self.repeats is not None:
            out.append((("repeats",), "give seeds or repeats, not both"))
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            out.append((("seeds",), f"seeds must be a non-empty list of distinct seeds, given {self.seeds}"))
        if self.mode == "zip" and len({len(a.values) for a in self.axes}) > 1:
            sizes = ", ".join(f"{a.column}: {len(a.values)}" for a in self.axes)
            out.append((("axes",), f"zip pairs the i-th values of every axis, so all axes need as many values "
                                   f"({sizes})"))
        if self.mode == "random" and self.samples is None:
            out.append((("mode",), "random mode needs samples: how many combinations to draw"))
        if self.mode != "random" and self.samples is not None:
            out.append((("samples",), f"samples is for mode: random (mode is {self.mode})"))
        columns = [a.column for a in self.axes]
        if len(set(columns)) != len(columns):
            out.append((("axes",), f"two axes share the column name in {columns}; give them distinct name:"))
        if self.report.group_by is not None and self.report.group_by not in columns:
            out.append((("report", "group_by"), f"report.group_by {self.report.group_by!r} is not an axis; axes: "
                                                f"{', '.join(columns) or '(none)'}"))
        return out

    @property
    def seed_list(self) -> list[int]:
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(self.repeats)) if self.repeats else [self.train.seed]

    @property
    def group_by(self) -> str | None:
        return self.report.group_by or (self.axes[0].column if self.axes else None)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep, self-contained (plain data only, so it travels to worker processes and Ray tasks)."""

    run_id: str
    labels: dict[str, str]  # axis column -> value label
    seed: int
    recipe: dict[str, Any]  # the resolved recipe with this run's values set
    data: dict[str, Any]
    train: dict[str, Any]
    measure: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)  # path -> value set by the axes
    invalid: str | None = None  # why the recipe is rejected at this run's resolution (recorded as a failed run)

    @property
    def config_key(self) -> str:
        """The run without its seed: runs that differ only by seed share it."""
        return ", ".join(f"{k}={v}" for k, v in self.labels.items()) or "base"

    @property
    def title(self) -> str:
        return f"{self.config_key} seed={self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "labels": self.labels, "seed": self.seed, "recipe": self.recipe,
                "data": self.data, "train": self.train, "measure": self.measure, "values": self.values,
                "invalid": self.invalid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        return cls(**data)


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
    return keep.strip("_")[:60]


class Sweep:
    """A validated sweep spec and its expansion into runs (``plan``); ``run`` executes them (see executor.py)."""

    def __init__(self, spec: SweepSpec, *, raw: Any = None, file: Path | None = None) -> None:
        self.spec, self.raw, self.file = spec, raw, file

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any] | SweepSpec) -> Sweep:
        """A sweep from a YAML file, a mapping or a SweepSpec; mistakes raise SweepError with places."""
        if isinstance(source, SweepSpec):
            return cls(source)
        if isinstance(source, Mapping):
            raw, file = from_plain(dict(source), Where("<python>")), None
        else:
            file = Path(source).resolve()
            try:
                raw = load_file(file)
            except RecipeError as err:  # unreadable, YAML syntax
                raise SweepError([Problem(p.file, p.line, p.path, p.message.replace("cannot read recipe",
                                                                                    "cannot read sweep spec"))
                                  for p in err.problems]) from None
            except UnicodeDecodeError as err:
                byte = err.object[err.start:err.start + 1]
                raise SweepError([Problem(str(file), None, None, f"not UTF-8 text (byte {err.start}: {byte!r})")]) from None
            if not isinstance(raw, Doc):
                raise SweepError([Problem(str(file), 1, None, "a sweep spec is a mapping of fields")])
            if "name" not in raw:
                raw["name"] = file.stem
                raw.where["name"] = Where(str(file), 1)
        try:
            spec = SweepSpec.model_validate(raw, context={PLACED: True})
        except ValidationError as err:
            raise SweepError(problems_from(err.errors(include_url=False), raw, SweepSpec)) from None
        sweep = cls(spec, raw=raw, file=file)
        problems = [sweep._problem(loc, _dotted(loc), message) for loc, message in spec.problems()]
        if problems:
            raise SweepError(problems)
        return sweep

    # -- places in the spec, for errors -------------------------------------------------------------------
    def _where(self, *loc: Any) -> tuple[str | None, int | None]:
        node, where = self.raw, getattr(self.raw, "at", None)
        for key in loc:
            try:
                if isinstance(node, Doc):
                    where = node.where.get(key, where)
                elif isinstance(node, DocList):
                    where = node.where[key] or where
                node = node[key]
            except (KeyError, IndexError, TypeError):
                break
        return (where.file, where.line) if where else (None, None)

    def _problem(self, loc: tuple[Any, ...], path: str, message: str) -> Problem:
        file, line = self._where(*loc)
        return Problem(file or "<sweep>", line, path, message)

    def _base_source(self) -> str | Path | dict[str, Any]:
        base = self.spec.base
        if isinstance(base, str) and self.file is not None and (self.file.parent / base).is_file():
            return self.file.parent / base
        return base

    def base_recipe(self) -> dict[str, Any]:
        """The base recipe, resolved, with the spec's overrides and the data's image size."""
        from metablocks.recipe.loader import load_recipe

        overrides = {**self.spec.overrides, "img_size": self.spec.data.img_size}
        source = self._base_source()
        try:
            recipe = load_recipe(source, overrides)
        except RecipeError as err:
            problems = []
            for p in err.problems:
                if isinstance(source, (str, Path)) and p.file == str(source) and p.line is None:  # not found
                    problems.append(self._problem(("base",), "base", f"{p.message} (base {str(source)!r}: a recipe "
                                                  f"file relative to the sweep spec, or a shipped recipe name)"))
                elif p.file == "<override>":
                    key = p.path if p.path in self.spec.overrides else None
                    loc = ("overrides", key) if key else ("overrides",)
                    problems.append(self._problem(loc, f"overrides.{p.path}", p.message))
                else:
                    problems.append(p)
            raise SweepError(problems) from None
        return recipe.dump()

    # -- expansion -------------------------------------------------------------------------------------------
    def combinations(self) -> list[tuple[int, ...]]:
        """Value indices per axis, for every combination the mode asks for (in a stable order)."""
        sizes = [len(a.values) for a in self.spec.axes]
        if not sizes:
            return [()]
        if self.spec.mode == "zip":
            return [(i,) * len(sizes) for i in range(sizes[0])]
        grid = list(itertools.product(*(range(n) for n in sizes)))
        if self.spec.mode == "random":
            if self.spec.samples > len(grid):
                raise SweepError([self._problem(("samples",), "samples", f"samples={self.spec.samples} exceeds the "
                                                f"{len(grid)} combinations of the grid")])
            picked = sorted(random.Random(self.spec.sample_seed).sample(range(len(grid)), self.spec.samples))
            return [grid[i] for i in picked]
        return grid

    def plan(self) -> list[RunSpec]:
        """Every run, validated: structural mistakes raise SweepError; a recipe rejected at its resolution
        (a mixer that cannot take the map size) becomes a run marked ``invalid``, recorded as failed when run."""
        from metablocks.model import check_recipe
        from metablocks.recipe.loader import apply_override, expand
        from metablocks.recipe.schema import Recipe

        base = self.base_recipe()
        runs, problems = [], []
        for combo in self.combinations():
            raw = from_plain(copy.deepcopy(base), Where("<base>"))
            settings = {"train": self.spec.train.model_dump(mode="json"), "data": self.spec.data.model_dump(mode="json")}
            labels, values, failed = {}, {}, False
            for a, (axis, index) in enumerate(zip(self.spec.axes, combo)):
                labels[axis.column] = axis.label(index)
                value = axis.values[index]
                for path in axis.paths:
                    values[path] = value
                    try:
                        head, _, rest = path.partition(".")
                        if head in SETTINGS and rest:
                            settings[head] = _set(settings[head], rest, value)
                        else:
                            apply_override(raw, path, value)
                    except RecipeError as err:
                        problems += [self._problem(("axes", a, "values", index), f"axes[{a}].values[{index}]",
                                                   f"{path}: {p.message}") for p in err.problems]
                        failed = True
            if failed:
                continue
            checked, bad = {}, False
            for head, model in SETTING_MODELS.items():
                try:
                    checked[head] = validate(model, settings[head])
                except RecipeError as err:  # a bad value for a train./data. path
                    bad = True
                    for p in err.problems:
                        full = f"{head}.{p.path}" if p.path else head
                        at = next((a for a, axis in enumerate(self.spec.axes)
                                   if any(path.partition(".")[0] == head and _under(full, path) or
                                          _under(path, full) for path in axis.paths)), None)
                        if at is None:
                            problems.append(self._problem((head,), full, f"{self._describe(labels)}: {p.message}"))
                        else:
                            index = combo[at]
                            problems.append(self._problem(("axes", at, "values", index), f"axes[{at}].values[{index}]",
                                                          f"{full}: {p.message}"))
            if bad:
                continue
            data, train = checked["data"], checked["train"]
            raw["img_size"] = data.img_size
            raw = expand(raw)
            try:
                recipe = validate(Recipe, raw)
            except RecipeError as err:
                for p in err.problems:
                    at = next((a for a, axis in enumerate(self.spec.axes)
                               if any(p.path and _under(p.path, path) for path in axis.paths)), None)
                    if at is None:
                        problems.append(Problem(p.file, p.line, p.path, f"{self._describe(labels)}: {p.message}"))
                    else:
                        index = combo[at]
                        problems.append(self._problem(("axes", at, "values", index), f"axes[{at}].values[{index}]",
                                                      f"{p.path}: {p.message}"))
                continue
            recipe._raw = raw
            invalid = None
            try:
                check_recipe(recipe)
            except RecipeError as err:
                invalid = "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in err.problems)
            for seed in self.spec.seed_list:
                train_seeded = train.model_copy(update={"seed": seed}).model_dump(mode="json")
                resolved = recipe.dump()
                key = json.dumps({"recipe": resolved, "data": data.model_dump(mode="json"), "train": train_seeded},
                                 sort_keys=True)
                digest = hashlib.sha256(key.encode()).hexdigest()[:8]
                slug = _slug("-".join(f"{v}" for v in labels.values()) or "base")
                runs.append(RunSpec(f"{slug}-s{seed}-{digest}", labels, seed, resolved, data.model_dump(mode="json"),
                                    train_seeded, self.spec.measure.model_dump(mode="json"), values, invalid))
        if problems:
            raise SweepError(list(dict.fromkeys(problems)))
        ids = [r.run_id for r in runs]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise SweepError([self._problem(("axes",), "axes", f"two combinations give the same run: {dupes[0]} "
                                            f"(repeated values on an axis?)")])
        return runs

    def _describe(self, labels: dict[str, str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in labels.items()) or "base"


def _tokens(path: str) -> list[Any]:
    from metablocks.recipe.loader import _TOKEN

    out: list[Any] = []
    for key, index in _TOKEN.findall(path):
        if key:
            out += [int(key)] if key.lstrip("-").isdigit() else [key]
        elif ":" in index:
            start, stop = (int(part) if part else None for part in index.split(":"))
            out.append(slice(start, stop))
        else:
            out.append(int(index))
    return out


def _under(path: str, axis_path: str) -> bool:
    """Whether an error at ``path`` (stages[2].token_mixer.x) falls under the axis path (stages[2:].token_mixer)."""
    got, want = _tokens(path), _tokens(axis_path)
    if len(got) < len(want):
        return False
    for g, w in zip(got, want):
        if isinstance(w, slice):
            if not isinstance(g, int) or (w.start is not None and w.start >= 0 and g < w.start) or (
                    w.stop is not None and w.stop >= 0 and g >= w.stop):
                return False
        elif g != w and not (isinstance(w, int) and isinstance(g, int) and w < 0):
            return False
    return True


def _set(settings: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``settings`` with the dotted ``path`` set to ``value`` (train./data. axes)."""
    out = copy.deepcopy(settings)
    node = out
    keys = path.split(".")
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError([Problem(None, None, path, f"{'.'.join(keys[:depth + 1])} is a value ({node!r}), not "
                                                         f"a section with fields")])
    if not all(keys):
        raise RecipeError([Problem(None, None, path, "cannot parse this path (an empty field name)")])
    node[keys[-1]] = value
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    """("axes", 0, "labels") -> "axes[0].labels"."""
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out
