"""Loading recipes: YAML (or a dict) -> extends flattened -> overrides applied -> stages expanded -> Recipe."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from metablocks.recipe.errors import Problem, RecipeError, validate
from metablocks.recipe.schema import Recipe
from metablocks.recipe.yaml_io import Doc, DocList, Shadow, Where, from_plain, load_file, merge, parse, plain

SUGAR = ("extends", "block", "blocks", "stage_defaults", "downsample")


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


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _find_extends(name: str, relative_to: Path | None, root: Path, where: Where) -> Path:
    """The file ``extends: name`` means: next to the recipe, or a shipped recipe (by path or name).

    Only files inside the recipe's folder tree (the folder of the recipe being loaded) or the shipped recipes are
    read: absolute paths, ``..`` out of the tree and symlinks that lead out of it are refused, unread.
    """
    def refuse(why: str) -> RecipeError:
        return RecipeError([Problem(where.file, where.line, "extends", f"extends {name!r} is refused: {why}; a recipe "
                                    f"extends files in its own folder tree ({root}) or the shipped recipes")])

    if Path(name).is_absolute():
        raise refuse("an absolute path")
    roots = [root.resolve(), recipes_dir().resolve()]
    candidates = [relative_to.parent / name] if relative_to is not None else [root / name]
    stem = Path(name).name if Path(name).suffix in (".yaml", ".yml") else Path(name).name + ".yaml"
    candidates += [recipes_dir() / name, *sorted(recipes_dir().rglob(stem))]
    shipped = shipped_recipes()
    if name in shipped:
        candidates.append(shipped[name])
    outside = False
    for candidate in candidates:
        for path in (candidate, candidate.with_suffix(".yaml")):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                if _inside(path.resolve(), roots):
                    return path.resolve()
                outside = True
    if outside:
        raise refuse("it leads outside the recipe's folder tree")
    raise RecipeError([Problem(where.file, where.line, "extends", f"cannot find the recipe to extend: {name!r} "
                               f"(looked next to the recipe and in {recipes_dir()})")])


def _flatten(raw: Any, file: Path | None, chain: tuple[Path, ...], root: Path | None = None,
             files: list[str] | None = None) -> Any:
    """Resolve ``extends`` recursively: the base first, this file's keys merged over it. ``files`` collects the files
    read, the recipe's own first: a value from an earlier file is more specific (see ``expand``)."""
    if not isinstance(raw, Doc) or "extends" not in raw:
        return raw
    root = root if root is not None else (file.parent if file is not None else Path.cwd())
    files = files if files is not None else []
    where = raw.where["extends"]
    name = raw["extends"]
    if not isinstance(name, str):
        raise RecipeError([Problem(where.file, where.line, "extends", f"extends takes a file name, given {name!r}")])
    base_file = _find_extends(name, file, root, where)
    if base_file in chain or base_file == file:
        cycle = " -> ".join(p.name for p in (*chain, base_file))
        raise RecipeError([Problem(where.file, where.line, "extends", f"extends cycle: {cycle}")])
    loaded = load_file(base_file)
    if not isinstance(loaded, Doc):
        raise RecipeError([Problem(where.file, where.line, "extends", f"{base_file.name} is not a recipe: it holds a "
                                   f"{type(loaded).__name__}, not a mapping of fields")])
    files.append(str(base_file))
    base = _flatten(loaded, base_file, (*chain, base_file), root, files)
    child = copy.deepcopy(raw)
    del child["extends"]
    if isinstance(child.get("stages"), list) and isinstance(base.get("stages"), list):
        _hint_stage_edit(child, base)
    return merge(base, child)


def _hint_stage_edit(child: Doc, base: Doc) -> None:
    """A child's ``stages:`` list replaces the base's; entries without depth/dim suggest the user meant to edit one."""
    incomplete = [i for i, stage in enumerate(child["stages"]) if isinstance(stage, dict) and not {"depth", "dim"} <= set(stage)]
    if incomplete:
        where = child.where["stages"]
        i = incomplete[0]
        raise RecipeError([Problem(where.file, where.line, "stages",
                                   f"stages: as a list replaces all {len(base['stages'])} stages of the recipe it "
                                   f"extends, so each entry needs depth and dim (entry {i} has no "
                                   f"{' or '.join(k for k in ('depth', 'dim') if k not in child['stages'][i])}); to "
                                   f"change stage {i} only, write stages: {{{i}: {{...}}}}")])


_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d*(?::-?\d*)?)\]")


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[tuple[str, Any]]:
    """``{"stages[2].token_mixer.type": "attention"}`` or ``["stages[2].token_mixer.type=attention"]`` (values as YAML)."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs, problems = [], []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            problems.append(Problem("<override>", None, str(item)[:80], "an override is PATH=VALUE, e.g. "
                                    "stages[2].token_mixer.type=attention"))
            continue
        path, value = item.split("=", 1)
        try:
            pairs.append((path.strip(), plain(parse(value, "<override>"))))
        except RecipeError as err:
            problems += [Problem("<override>", None, path.strip(), f"cannot parse the value {value[:80]!r}: {p.message}")
                         for p in err.problems]
    if problems:
        raise RecipeError(problems)
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


def expand(raw: Doc, problems: list[Problem] | None = None, files: list[str] | None = None) -> Doc:
    """Fold ``block``, ``stage_defaults`` and ``downsample`` into each stage: the resolved form's shape.

    Precedence, lowest first: ``block`` < ``stage_defaults[i]`` < ``stages[i]`` (and a stage's own ``downsample`` over
    the top-level one). A value that a less specific key in a *base* file overrides (a child's ``stage_defaults``
    against the base's ``stages``) would have no effect: that is a problem, reported with both places. Problems go
    to ``problems`` (raised at once when it is None), so the rest of the recipe is still checked.
    """
    raise_now = problems is None
    problems = [] if problems is None else problems
    out = Doc(at=raw.at)
    for key, value in raw.items():
        if key not in SUGAR:
            out[key] = value
            out.where[key] = raw.where.get(key)
    stages = raw.get("stages")
    if isinstance(stages, list):
        out["stages"] = _expand_stages(raw, stages, problems, files or [])
    if raise_now and problems:
        raise RecipeError(problems)
    return out


def _problem(where: Where | None, path: str, message: str) -> Problem:
    return Problem(where.file if where else None, where.line if where else None, path, message)


def _expand_stages(raw: Doc, stages: list, problems: list[Problem], files: list[str]) -> DocList:
    block = raw.get("block")
    if block is not None and not isinstance(block, dict):
        problems.append(_problem(raw.where.get("block"), "block", f"block: takes a mapping of block fields (norm, "
                                 f"token_mixer, channel_mixer, ...), given {_given(block)}"))
        block = None
    block = _moved(block or Doc(), "block")
    templates = raw.get("blocks")  # named block templates: defaults of every stage that has a pattern
    if templates is not None and not isinstance(templates, dict):
        problems.append(_problem(raw.where.get("blocks"), "blocks", f"blocks: takes a mapping of named block templates "
                                 f"(ncb: {{...}}, ntb: {{...}}), given {_given(templates)}"))
        templates = None
    defaults = raw.get("stage_defaults")
    if defaults is not None:
        where = raw.where.get("stage_defaults")
        if not isinstance(defaults, list) or len(defaults) != len(stages):
            count = len(defaults) if isinstance(defaults, list) else f"{_given(defaults)}, not a list"
            problems.append(_problem(where, "stage_defaults", f"stage_defaults must list one entry per stage: "
                                     f"{len(stages)} stages, given {count}"))
            defaults = None
        else:
            for i, entry in enumerate(defaults):
                if not isinstance(entry, dict):
                    problems.append(_problem(defaults.where[i] if isinstance(defaults, DocList) else where,
                                             f"stage_defaults[{i}]", f"each stage_defaults entry is a mapping of stage "
                                             f"fields ({{}} for none), given {_given(entry)}"))
            defaults = [entry if isinstance(entry, dict) else Doc() for entry in defaults]
    rank = {str(Path(file).resolve()): i for i, file in enumerate(files)}  # 0: the recipe itself

    def specificity(where: Where | None) -> int:
        """How specific the file a value was written in is: overrides and Python dicts -1, the recipe 0, its base 1..."""
        if where is None or where.file.startswith("<"):
            return -1
        return rank.get(str(Path(where.file).resolve()), len(rank))

    def no_effect(shadowed: list[Shadow], i: int) -> None:
        for path, lower, upper in shadowed:
            if lower is not None and upper is not None and specificity(lower) < specificity(upper):
                problems.append(Problem(lower.file, lower.line, lower.path or path,
                                        f"has no effect: stages[{i}].{path} is set in {upper.file}:{upper.line} "
                                        f"({upper.path or 'stages'}), which takes precedence (block < stage_defaults < "
                                        f"stages); to change this stage from here, write stages: {{{i}: {{{path}: ...}}}}"))

    expanded = DocList(at=stages.at if isinstance(stages, DocList) else None)
    for i, stage in enumerate(stages):
        if isinstance(stage, dict):
            shadowed: list[Shadow] = []
            layered = merge(block, _moved(defaults[i], f"stage_defaults[{i}]"), shadowed) if defaults else block
            own_templates = "blocks" in stage or bool(defaults and "blocks" in defaults[i])
            stage = merge(layered, stage, shadowed)
            if templates is not None and ("pattern" in stage or own_templates):
                under = Doc(blocks=_moved(templates, "blocks"))
                under.where["blocks"] = raw.where.get("blocks")
                stage = merge(under, stage, shadowed)
            no_effect(shadowed, i)
            top = raw.where.get("downsample")
            if "downsample" not in stage:
                stage["downsample"] = _moved(raw["downsample"], "downsample") if i > 0 and "downsample" in raw else None
                stage.where["downsample"] = top if i > 0 and "downsample" in raw else stage.at
            elif i > 0 and "downsample" in raw:
                no_effect([("downsample", top, stage.where.get("downsample"))], i)
        expanded.append(stage)
    expanded.where = list(stages.where) if isinstance(stages, DocList) else [None] * len(stages)
    return expanded


def _given(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


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

    Every mistake raises RecipeError naming file, line and field, all of them at once; semantic checks
    (divisibility, resolutions, kernel parity) and resource limits (``metablocks.recipe.limits``) run here too,
    before any tensor is allocated.
    """
    from metablocks.recipe.checks import Parts, recipe_problems

    if isinstance(source, Recipe):
        if not overrides:
            return source
        source = source.dump()
    raw, file = load_raw(source)
    files = [str(file)] if file else []
    root = file.parent if file else Path.cwd()
    raw = _flatten(raw, file, (file,) if file else (), root, files)
    problems: list[Problem] = []
    for path, value in parse_overrides(overrides):
        try:
            apply_override(raw, path, value)
        except RecipeError as err:
            problems += err.problems
    raw = expand(raw, problems, files)
    try:
        recipe = validate(Recipe, raw)
    except RecipeError as err:  # with the semantic problems of the parts that are valid on their own
        raise RecipeError([*problems, *err.problems, *recipe_problems(Parts.salvage(raw))]) from None
    recipe._raw = raw
    problems += recipe_problems(Parts.of(recipe))
    if not problems:
        problems += _limits(recipe)
    if problems:
        raise RecipeError(problems)
    return recipe


_LIMITS_SEEN: dict[tuple[Any, ...], list[Problem]] = {}


def _limits(recipe: Recipe) -> list[Problem]:
    """``limit_problems``, remembered per architecture (a meta-device forward costs 0.05-0.5 s for a large model)."""
    from metablocks.recipe.limits import current, limit_problems

    key = (recipe.model_id, current())
    if key not in _LIMITS_SEEN:
        found = limit_problems(recipe)
        if found:
            return found  # places differ between files: not cached
        _LIMITS_SEEN[key] = found
    return _LIMITS_SEEN[key]
