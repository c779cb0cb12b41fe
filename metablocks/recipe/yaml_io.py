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


def parse(text: str, file: str) -> Any:
    """Parse YAML text safely into Doc/DocList/plain scalars, every value with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(err, "problem", None) or str(err)
        raise RecipeError([Problem(file, line, None, f"YAML syntax error: {what}")]) from None
    if node is None:
        return Doc(at=Where(file, 1))
    return _construct(node, file, yaml.SafeLoader(""))


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str", "int", "float", "bool", "null", "merge")}


def _construct(node: yaml.Node, file: str, loader: yaml.SafeLoader) -> Any:
    at = Where(file, node.start_mark.line + 1)
    if node.tag not in _PLAIN_TAGS:
        raise RecipeError([Problem(file, at.line, None, f"YAML tag {node.tag!r} is not allowed: recipes hold plain "
                                   f"data only (mappings, lists, strings, numbers, booleans, null)")])
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # merge keys (<<: *anchor)
        doc = Doc(at=at)
        for key_node, value_node in node.value:
            key = _construct(key_node, file, loader)
            if key in doc:
                raise RecipeError([Problem(file, key_node.start_mark.line + 1, str(key), f"duplicate key {key!r}")])
            doc[key] = _construct(value_node, file, loader)
            doc.where[key] = Where(file, key_node.start_mark.line + 1)
        return doc
    if isinstance(node, yaml.SequenceNode):
        items = DocList([_construct(item, file, loader) for item in node.value], at=at)
        items.where = [Where(file, item.start_mark.line + 1) for item in node.value]
        return items
    return loader.construct_object(node, deep=True)


def load_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise RecipeError([Problem(str(path), None, None, f"cannot read recipe: {err.strerror}")]) from None
    return parse(text, str(path))


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


def is_component(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


def merge(base: Any, child: Any) -> Any:
    """``child`` over ``base``: mappings merge key by key, anything else is replaced.

    A component whose ``type`` changes is replaced whole: its old fields belong to another component.
    """
    if not (isinstance(base, dict) and isinstance(child, dict)):
        return copy.deepcopy(child)
    if is_component(base) and is_component(child) and base["type"] != child["type"]:
        return copy.deepcopy(child)
    out = copy.deepcopy(base)
    if not isinstance(out, Doc):
        out = from_plain(out, Where("<python>"))
    for key, value in child.items():
        out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        out.where[key] = child.where.get(key, out.where.get(key)) if isinstance(child, Doc) else out.where.get(key)
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
