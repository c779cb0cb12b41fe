"""Loading recipes: YAML (or a dict) -> extends flattened -> overrides applied -> stages expanded -> Recipe."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from metablocks.recipe.errors import Problem, RecipeError, validate
from metablocks.recipe.schema import Recipe
from metablocks.recipe.yaml_io import Doc, DocList, Where, from_plain, load_file, merge

SUGAR = ("extends", "block", "stage_defaults", "downsample")


def recipes_dir() -> Path:
    """Where the shipped recipes are: inside the installed package, or ``recipes/`` of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_recipes"
    return installed if installed.is_dir() else package.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Name -> file of every shipped recipe that is a model (family bases, which have no ``stages``, are left out)."""
    files = sorted(recipes_dir().rglob("*.yaml"))
    data = {path: _parsed(path) for path in files}
    by_name = {path.name: path for path in files}

    def has_stages(path: Path, seen: tuple[Path, ...] = ()) -> bool:
        base = data[path].get("extends")
        if "stages" in data[path]:
            return True
        base_path = by_name.get(base if str(base).endswith(".yaml") else f"{base}.yaml")
        return base_path is not None and base_path not in seen and has_stages(base_path, (*seen, path))

    return {data[path].get("name", path.stem): path for path in files if has_stages(path)}


_PARSED: dict[Path, tuple[tuple[int, int], Any]] = {}
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parsed(path: Path) -> Any:
    """``yaml.safe_load`` of a file, cached until the file changes (size or mtime): listing the shipped recipes
    parses every file, and ``load_recipe`` lists them, so without the cache a build re-parses them all."""
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _PARSED.get(path)
    if cached is None or cached[0] != key:
        cached = _PARSED[path] = (key, yaml.load(path.read_text(), Loader=_SafeLoader) or {})
    return cached[1]


def _find_extends(name: str, relative_to: Path | None, where: Where) -> Path:
    candidates = [Path(name)] if Path(name).is_absolute() else []
    if relative_to is not None:
        candidates.append(relative_to.parent / name)
    stem = Path(name).name if Path(name).suffix in (".yaml", ".yml") else Path(name).name + ".yaml"
    candidates += [recipes_dir() / name, *recipes_dir().rglob(stem)]
    shipped = shipped_recipes()
    if name in shipped:
        candidates.append(shipped[name])
    for candidate in candidates:
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate.resolve()
        if candidate.with_suffix(".yaml").is_file():
            return candidate.with_suffix(".yaml").resolve()
    raise RecipeError([Problem(where.file, where.line, "extends", f"cannot find the recipe to extend: {name!r} "
                               f"(looked next to the recipe and in {recipes_dir()})")])


def _flatten(raw: Any, file: Path | None, chain: tuple[Path, ...]) -> Any:
    """Resolve ``extends`` recursively: the base first, this file's keys merged over it."""
    if not isinstance(raw, Doc) or "extends" not in raw:
        return raw
    where = raw.where["extends"]
    name = raw["extends"]
    if not isinstance(name, str):
        raise RecipeError([Problem(where.file, where.line, "extends", f"extends takes a file name, given {name!r}")])
    base_file = _find_extends(name, file, where)
    if base_file in chain or base_file == file:
        cycle = " -> ".join(p.name for p in (*chain, base_file))
        raise RecipeError([Problem(where.file, where.line, "extends", f"extends cycle: {cycle}")])
    base = _flatten(load_file(base_file), base_file, (*chain, base_file))
    child = copy.deepcopy(raw)
    del child["extends"]
    return merge(base, child)


_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d*(?::-?\d*)?)\]")


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[tuple[str, Any]]:
    """``{"stages[2].token_mixer.type": "attention"}`` or ``["stages[2].token_mixer.type=attention"]`` (values as YAML)."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise RecipeError([Problem("<override>", None, item, "an override is PATH=VALUE, e.g. "
                                       "stages[2].token_mixer.type=attention")])
        path, value = item.split("=", 1)
        try:
            pairs.append((path.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as err:
            raise RecipeError([Problem("<override>", None, path, f"cannot parse the value {value!r}: {err}")]) from None
    return pairs


def apply_override(raw: Doc, path: str, value: Any) -> None:
    """Set ``path`` (dotted, with [i] and [a:b] indices) in ``raw``; a new ``type`` replaces the component."""
    tokens = [(key, index) for key, index in _TOKEN.findall(path)]
    if not tokens or "".join(k or f"[{i}]" for k, i in tokens).replace(".", "") != path.replace(".", ""):
        raise RecipeError([Problem("<override>", None, path, "cannot parse this override path")])
    where = Where("<override>", None, path)

    def fail(message: str) -> RecipeError:
        return RecipeError([Problem("<override>", None, path, message)])

    def visit(node: Any, rest: list[tuple[str, str]], parent: Any, key: Any) -> None:
        (name, index), rest = rest[0], rest[1:]
        if name:
            if not isinstance(node, dict):
                raise fail(f"{name!r} does not name a field here: the value there is {node!r}")
            if not rest:
                if name == "type" and isinstance(parent, (dict, list)):
                    parent[key] = merge(node, from_plain({"type": value}, where))
                else:
                    node[name] = merge(node.get(name), from_plain(value, where)) if name in node else from_plain(value, where)
                    node.where[name] = where
                return
            if name not in node or node[name] is None:
                node[name] = Doc(at=where)
                node.where[name] = where
            visit(node[name], rest, node, name)
            return
        if not isinstance(node, list):
            raise fail(f"[{index}] indexes a list, but the value there is {node!r}")
        if ":" in index:
            start, stop = (int(part) if part else None for part in index.split(":"))
            targets = range(len(node))[slice(start, stop)]
        else:
            i = int(index)
            if not -len(node) <= i < len(node):
                raise fail(f"index {i} is out of range: there are {len(node)} items")
            targets = [i % len(node)]
        for i in targets:
            if not rest:
                node[i] = from_plain(value, where)
                node.where[i] = where
            else:
                visit(node[i], rest, node, i)

    visit(raw, tokens, None, None)


def _moved(value: Any, path: str) -> Any:
    """A copy of ``value`` whose positions also record that it was written at ``path``."""
    value = copy.deepcopy(value)
    if isinstance(value, Doc):
        for key in list(value):
            value.where[key] = value.where.get(key, value.at or Where("<recipe>")).moved(f"{path}.{key}")
            value[key] = _moved(value[key], f"{path}.{key}")
    elif isinstance(value, DocList):
        for i in range(len(value)):
            value.where[i] = (value.where[i] or value.at or Where("<recipe>")).moved(f"{path}[{i}]")
            value[i] = _moved(value[i], f"{path}[{i}]")
    return value


def expand(raw: Doc) -> Doc:
    """Fold ``block``, ``stage_defaults`` and ``downsample`` into each stage: the resolved form's shape."""
    out = Doc(at=raw.at)
    for key, value in raw.items():
        if key not in SUGAR:
            out[key] = value
            out.where[key] = raw.where.get(key)
    stages = raw.get("stages")
    if not isinstance(stages, list):
        return out
    block = _moved(raw.get("block") or Doc(), "block")
    defaults = raw.get("stage_defaults")
    if defaults is not None and (not isinstance(defaults, list) or len(defaults) != len(stages)):
        where = raw.where["stage_defaults"]
        count = len(defaults) if isinstance(defaults, list) else "not a list"
        raise RecipeError([Problem(where.file, where.line, "stage_defaults",
                                   f"stage_defaults must list one entry per stage: {len(stages)} stages, given {count}")])
    expanded = DocList(at=stages.at if isinstance(stages, DocList) else None)
    for i, stage in enumerate(stages):
        if isinstance(stage, dict):
            layered = merge(block, _moved(defaults[i], f"stage_defaults[{i}]")) if defaults else block
            stage = merge(layered, stage)
            if "downsample" not in stage:
                stage["downsample"] = _moved(raw["downsample"], "downsample") if i > 0 and "downsample" in raw else None
                stage.where["downsample"] = raw.where.get("downsample") if i > 0 and "downsample" in raw else stage.at
        expanded.append(stage)
    expanded.where = list(stages.where) if isinstance(stages, DocList) else [None] * len(stages)
    out["stages"] = expanded
    return out


def load_raw(source: str | Path | Mapping[str, Any]) -> tuple[Doc, Path | None]:
    """The recipe's YAML (or dict) with positions, plus its file; shipped names resolve to their files."""
    if isinstance(source, Mapping):
        return from_plain(dict(source), Where("<python>")), None
    path = Path(source)
    if not path.exists() and isinstance(source, str) and not source.endswith((".yaml", ".yml")):
        shipped = shipped_recipes()
        if source in shipped:
            path = shipped[source]
        else:
            from metablocks.registry import did_you_mean

            raise RecipeError([Problem(str(source), None, None, f"no recipe file or shipped recipe named {source!r}"
                                       f"{did_you_mean(source, list(shipped))}")])
    raw = load_file(path)
    if not isinstance(raw, Doc):
        raise RecipeError([Problem(str(path), 1, None, f"a recipe is a mapping of fields, given {type(raw).__name__}")])
    if "name" not in raw:
        raw["name"] = path.stem
        raw.where["name"] = Where(str(path), 1)
    return raw, path.resolve()


def load_recipe(source: str | Path | Mapping[str, Any] | Recipe,
                overrides: Mapping[str, Any] | Iterable[str] | None = None) -> Recipe:
    """Load and validate a recipe (file, shipped name, dict or Recipe) with dotted ``overrides`` applied.

    Every mistake raises RecipeError naming file, line and field; semantic checks (divisibility, resolutions,
    kernel parity) run here too, before any tensor is allocated.
    """
    from metablocks.model import check_recipe

    if isinstance(source, Recipe):
        if not overrides:
            return source
        source = source.dump()
    raw, file = load_raw(source)
    raw = _flatten(raw, file, (file,) if file else ())
    for path, value in parse_overrides(overrides):
        apply_override(raw, path, value)
    raw = expand(raw)
    recipe = validate(Recipe, raw)
    recipe._raw = raw
    check_recipe(recipe)
    return recipe
