"""YAML that remembers where each value came from: safe loading with file and line per key.

Mappings load as ``Doc`` (a dict) and sequences as ``DocList`` (a list); both carry ``where``, the
position of each entry, so a mistake found after merging and validation can still be reported at the
file and line the user wrote. Only YAML's plain types load: tags such as ``!!python/object`` are errors.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metablocks.recipe.errors import Problem, RecipeError


@dataclass(frozen=True)
class Where:
    file: str
    line: int | None = None
    path: str | None = None  # where the value was written, when it was copied elsewhere (block: -> stages[i])

    def moved(self, path: str) -> Where:
        return self if self.path is not None else Where(self.file, self.line, path)


class Doc(dict):
    """A mapping with ``where[key]`` for each key and ``at`` for itself."""

    def __init__(self, *args: Any, at: Where | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.where: dict[Any, Where] = {}
        self.at = at

    def __deepcopy__(self, memo: dict) -> Doc:
        new = Doc(at=self.at)
        for k, v in self.items():
            new[k] = copy.deepcopy(v, memo)
        new.where = dict(self.where)
        return new


class DocList(list):
    """A sequence with ``where[i]`` for each item and ``at`` for itself."""

    def __init__(self, *args: Any, at: Where | None = None) -> None:
        super().__init__(*args)
        self.where: list[Where | None] = [None] * len(self)
        self.at = at

    def __deepcopy__(self, memo: dict) -> DocList:
        new = DocList([copy.deepcopy(v, memo) for v in self], at=self.at)
        new.where = list(self.where)
        return new


MAX_BYTES = 4 * 2**20  # a recipe file (the largest shipped one is ~2 KB)
MAX_NODES = 100_000  # values in one recipe after anchors/aliases are expanded (the largest shipped: ~200)
MAX_NESTING = 64  # mappings/lists inside each other (the deepest shipped recipe: 6)


def parse(text: str, file: str) -> Any:
    """Parse YAML text safely into Doc/DocList/plain scalars, every value with its line.

    Bounded: at most MAX_NESTING levels deep and MAX_NODES values once aliases are expanded (a "billion laughs"
    file is an error, not a hang); mapping keys are plain values (no ``? [a, b]``).
    """
    try:
        _prescan(text, file)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        if "nesting depth" in what:  # libyaml's own bound (1000 levels), met before ours in a flow collection
            raise RecipeError([Problem(file, line, None, f"nested too deeply: at most {MAX_NESTING} levels of "
                                       f"mappings and lists")]) from None
        raise RecipeError([Problem(file, line, None, f"YAML syntax error: {what}")]) from None
    except RecursionError:
        raise RecipeError([Problem(file, None, None, f"YAML nested too deeply (at most {MAX_NESTING} levels of "
                                   f"mappings and lists)")]) from None
    if node is None:
        return Doc(at=Where(file, 1))
    return _Constructor(file).construct(node, 0)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: a 1 MB recipe parses in ~0.1 s


def _prescan(text: str, file: str) -> None:
    """Depth and size of the YAML, from its event stream (iterative, stops at the first excess): composing a file
    nested thousands of levels deep would overflow the stack, and one whose aliases expand to billions of values would
    never finish."""
    depth, nodes, anchors, open_nodes = 0, 0, {}, []

    def fail(event: Any, message: str) -> RecipeError:
        return RecipeError([Problem(file, event.start_mark.line + 1, None, message)])

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth, nodes = depth + 1, nodes + 1
            if depth > MAX_NESTING:
                raise fail(event, f"nested too deeply: at most {MAX_NESTING} levels of mappings and lists")
            open_nodes.append((event.anchor, nodes))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor, start = open_nodes.pop()
            if anchor is not None:
                anchors[anchor] = nodes - start + 1
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            nodes += anchors.get(event.anchor, 1) if isinstance(event, yaml.AliasEvent) else 1
            if isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
                anchors[event.anchor] = 1
        if nodes > MAX_NODES:
            raise fail(event, f"the recipe holds more than {MAX_NODES:,} values once its anchors and aliases are "
                              f"expanded: too large to be a recipe")


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str", "int", "float", "bool", "null", "merge")}


class _Constructor:
    """Composed YAML nodes -> Doc / DocList / scalars, counting values and depth as it goes."""

    def __init__(self, file: str) -> None:
        self.file, self.nodes, self.loader = file, 0, yaml.SafeLoader("")  # its constructors only: plain scalars

    def fail(self, node: yaml.Node, message: str) -> RecipeError:
        return RecipeError([Problem(self.file, node.start_mark.line + 1, None, message)])

    def construct(self, node: yaml.Node, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"the recipe holds more than {MAX_NODES:,} values once its anchors and aliases are "
                                  f"expanded: too large to be a recipe")
        if depth > MAX_NESTING:
            raise self.fail(node, f"nested too deeply: at most {MAX_NESTING} levels of mappings and lists")
        at = Where(self.file, node.start_mark.line + 1)
        if node.tag not in _PLAIN_TAGS:
            raise self.fail(node, f"YAML tag {node.tag!r} is not allowed: recipes hold plain data only (mappings, "
                                  f"lists, strings, numbers, booleans, null)")
        if isinstance(node, yaml.MappingNode):
            try:
                self.loader.flatten_mapping(node)  # merge keys (<<: *anchor)
            except yaml.YAMLError as err:
                raise self.fail(node, f"YAML merge key error: {getattr(err, 'problem', err)}") from None
            doc = Doc(at=at)
            for key_node, value_node in node.value:
                key = self.construct(key_node, depth + 1)
                if isinstance(key, (dict, list)):
                    raise self.fail(key_node, "a mapping key must be a plain value (a name or a number), "
                                              "not a mapping or a list")
                if key in doc:
                    raise RecipeError([Problem(self.file, key_node.start_mark.line + 1, str(key), f"duplicate key {key!r}")])
                doc[key] = self.construct(value_node, depth + 1)
                doc.where[key] = Where(self.file, key_node.start_mark.line + 1)
            return doc
        if isinstance(node, yaml.SequenceNode):
            items = DocList([self.construct(item, depth + 1) for item in node.value], at=at)
            items.where = [Where(self.file, item.start_mark.line + 1) for item in node.value]
            return items
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError) as err:  # e.g. an integer of more digits than Python converts
            value = node.value if len(str(node.value)) <= 40 else f"{str(node.value)[:20]}... ({len(str(node.value))} characters)"
            why = str(err).splitlines()[0].split(";")[0][:120]
            raise self.fail(node, f"cannot read the value {value!r}: {why}") from None


def load_file(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RecipeError([Problem(str(path), None, None, f"the file has {size:,} bytes, more than a recipe may "
                                       f"({MAX_BYTES:,})")])
        data = path.read_bytes()
    except OSError as err:
        raise RecipeError([Problem(str(path), None, None, f"cannot read recipe: {err.strerror}")]) from None
    return parse(decode(data, str(path)), str(path))


def decode(data: bytes, file: str) -> str:
    """UTF-8 text of a recipe file; a file in another encoding is an error at the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise RecipeError([Problem(file, line, None, f"the file is not UTF-8 text (byte 0x{data[err.start]:02x} at "
                                   f"offset {err.start}): save it as UTF-8")]) from None


def from_plain(value: Any, where: Where) -> Any:
    """Wrap plain Python data (a dict from user code, an override value) as Doc/DocList at ``where``."""
    if isinstance(value, dict) and not isinstance(value, Doc):
        doc = Doc(at=where)
        for k, v in value.items():
            doc[k] = from_plain(v, where)
            doc.where[k] = where
        return doc
    if isinstance(value, (list, tuple)) and not isinstance(value, DocList):
        items = DocList([from_plain(v, where) for v in value], at=where)
        items.where = [where] * len(items)
        return items
    return value


def plain(value: Any) -> Any:
    """Doc / DocList back to plain dicts and lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def is_component(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


Shadow = tuple[str, Where | None, Where | None]
"""(path, where the replaced value was written, where the value replacing it was written)."""


def is_item_edit(value: Any) -> bool:
    """A mapping whose keys are all list indices: ``stages: {2: {token_mixer: attention}}`` edits item 2 of a list."""
    return isinstance(value, dict) and bool(value) and all(isinstance(k, int) and not isinstance(k, bool) for k in value)


def merge(base: Any, child: Any, shadowed: list[Shadow] | None = None, path: str = "") -> Any:
    """``child`` over ``base``: mappings merge key by key, anything else is replaced.

    A component whose ``type`` changes is replaced whole: its old fields belong to another component. A mapping of
    list indices over a list merges into those items (``stages: {2: {...}}`` changes stage 2 only; negative
    indices count from the end). ``shadowed`` collects every value of ``base`` that ``child`` replaced.
    """
    if isinstance(base, list) and is_item_edit(child):
        return _edit_items(base, child, shadowed, path)
    if not (isinstance(base, dict) and isinstance(child, dict)) or _type_changes(base, child):
        return copy.deepcopy(child)
    out = copy.deepcopy(base)
    if not isinstance(out, Doc):
        out = from_plain(out, Where("<python>"))
    for key, value in child.items():
        sub = f"{path}.{key}" if path else str(key)
        if key in out:
            old = out[key]
            if shadowed is not None and old is not None and _replaces(old, value):
                shadowed.append((sub, out.where.get(key), child.where.get(key) if isinstance(child, Doc) else None))
            out[key] = merge(old, value, shadowed, sub)
        else:
            out[key] = copy.deepcopy(value)
        out.where[key] = child.where.get(key, out.where.get(key)) if isinstance(child, Doc) else out.where.get(key)
    return out


def _type_changes(base: Any, child: Any) -> bool:
    return is_component(base) and is_component(child) and base["type"] != child["type"]


def _replaces(old: Any, new: Any) -> bool:
    """Does merging ``new`` over ``old`` throw ``old`` away (rather than merge into it)?"""
    if isinstance(old, list) and is_item_edit(new):
        return False
    return not (isinstance(old, dict) and isinstance(new, dict)) or _type_changes(old, new)


def _edit_items(base: list, edits: dict, shadowed: list[Shadow] | None, path: str) -> DocList:
    out = copy.deepcopy(base) if isinstance(base, DocList) else from_plain(list(base), Where("<python>"))
    for index, value in edits.items():
        where = edits.where.get(index) if isinstance(edits, Doc) else None
        if not -len(out) <= index < len(out):
            raise RecipeError([Problem(where.file if where else None, where.line if where else None, f"{path}[{index}]",
                                       f"edits item {index}, but the list it edits has {len(out)} items "
                                       f"(indices 0..{len(out) - 1}, or -{len(out)}..-1 from the end)")])
        i = index % len(out)
        out[i] = merge(out[i], value, shadowed, f"{path}[{i}]")
        out.where[i] = where or out.where[i]
    return out


def where_of(data: Any, loc: tuple[Any, ...]) -> tuple[Where | None, str]:
    """The position of the deepest entry of ``data`` along ``loc``, and ``loc`` as a path string.

    Entries of ``loc`` that do not index ``data`` (pydantic's union tags, the list index a single value was
    wrapped in) are skipped.
    """
    where = getattr(data, "at", None)
    path = ""
    node = data
    for key in loc:
        if isinstance(node, dict) and key in node:
            where = node.where.get(key, where) if isinstance(node, Doc) else where
            path += f".{key}" if path else str(key)
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            where = (node.where[key] if isinstance(node, DocList) else None) or where
            path += f"[{key}]"
            node = node[key]
        elif isinstance(key, str) and not any(c in key for c in "[("):
            path += f".{key}" if path else key  # a field that is not there: name it, point at its parent
            node = None
        # else: a union tag, or the index a single value was wrapped in: not part of the user's path
    return where, path
