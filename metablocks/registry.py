"""Component registry: kind -> name -> pydantic config class (which knows its module).

A component is an ``nn.Module`` plus a pydantic config whose fields are the module's keyword
arguments. ``register`` files it under a kind and a name; recipes then refer to it by
``type: name`` and are validated against its config, whether it ships with metablocks, comes from
a user's own module, or from an installed package's ``metablocks.components`` entry point.

A file or module of the user's own is loaded in any process with ``load_plugin("my_mixers.py")`` (the CLI's
``--plugin``) or through the ``METABLOCKS_PLUGINS`` environment variable (entries separated by ``os.pathsep``), which
worker processes inherit.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import types
import typing
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema
from torch import nn

KINDS: tuple[str, ...] = ("token_mixer", "channel_mixer", "norm", "act", "stem", "downsample", "head", "shortcut",
                          "pos_embed")
SLOT_KINDS: tuple[str, ...] = ("token_mixer", "channel_mixer", "norm", "act")  # what a block's named slot may hold
Layout = Literal["channels_first", "channels_last", "any", "tokens"]
# what a component does with the prefix tokens (CLS, distillation, registers) of a token stream (B, P + H*W, C):
# attends over them with the map's tokens (attention), applies to every token alike (norms, MLPs), or lets them pass
# (the block splits them off, runs the component on the (B, H, W, C) map and puts them back unchanged: conv mixers)
TokenMode = Literal["attend", "apply", "passthrough"]


@dataclass(frozen=True)
class Context:
    """What a component may know when it is checked or built: its place and the feature map it sees."""

    dim: int
    out_dim: int | None = None  # channels out, for stems, downsamplers (the stage's dim) and heads (num_classes)
    resolution: tuple[int, int] | None = None  # (H, W) of the map the component sees; None when unknown
    layout: Layout = "channels_first"  # the layout a layout-agnostic ("any") component is built for
    stage: int | None = None
    block: int | None = None
    stride: int = 1  # a block's transition: the stride the component that changes the map carries (blocks.py)
    drop_path: float = 0.0  # the block's drop-path rate (a composite that holds a whole block passes it on)
    prefix: tuple[str, ...] = ()  # the prefix tokens before the map's in a token stream, in order ("cls", "dist")

    @property
    def channels_last(self) -> bool:
        return self.layout in ("channels_last", "tokens")  # a token stream (B, N, C) keeps channels last too


class Component(BaseModel):
    """Base of every component config: strict and frozen; its fields are the module's keyword arguments.

    Subclasses may declare ``layout`` (the tensor layout the module works in), override ``check``
    (semantic constraints, reported before any tensor is allocated) and ``build``.
    """

    # floats are finite everywhere (``.nan``/``.inf`` in a recipe are errors); see ``_no_bool_numbers`` for ints
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    kind: ClassVar[str]
    name: ClassVar[str]
    module: ClassVar[Callable[..., nn.Module]]
    layout: ClassVar[Layout] = "any"
    # fields added after recipes were published: left out of dumps (and so of model_id) while at their default
    omit_when_default: ClassVar[frozenset[str]] = frozenset()
    takes_vector: ClassVar[bool] = False  # works on a pooled (B, C) vector as it is (LayerNorm); else shown a 1x1 map
    # can carry a block's transition (a width change ``ctx.dim -> ctx.out_dim`` and a stride ``ctx.stride``): None
    # derives it from the module's signature (an ``out_dim`` or ``in_dim`` parameter, and ``stride``); a config
    # that builds its module itself and reads ``ctx.out_dim``/``ctx.stride`` sets True
    changes_width: ClassVar[bool | None] = None
    tokens: ClassVar[TokenMode] = "passthrough"  # in a token stream; see TokenMode (``token_mode`` may refine it)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """``true`` is not 1: a boolean given for a field that takes no boolean is an error (pydantic would coerce it)."""
        if isinstance(data, dict):
            for name in _numeric_fields(cls):
                if isinstance(data.get(name), bool):
                    raise PydanticCustomError("bool_number", "{field} takes a number, given the boolean {given}",
                                              {"field": name, "given": str(data[name]).lower()})
        return data

    def kwargs(self) -> dict[str, Any]:
        """The module's keyword arguments: every field but ``type``, nested configs kept as configs."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != "type"}

    def dump(self) -> dict[str, Any]:
        """Plain data, ``type`` first, every default filled in; validating it gives this config back."""
        fields = self.model_dump(exclude={"type"})
        for name in type(self).omit_when_default:
            if getattr(self, name) == type(self).model_fields[name].default:
                fields.pop(name, None)
        return {"type": self.type, **fields}  # type: ignore[attr-defined]

    def check(self, ctx: Context) -> list[str]:
        """Constraint violations for this component at ``ctx`` (empty when it fits)."""
        return []

    def token_mode(self) -> TokenMode:
        """What this component does with a token stream's prefix tokens (``tokens``; a config may decide per value:
        attention with a spatial reduction needs the map)."""
        return type(self).tokens

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        """The components inside this one, each with its place (field path) and the context it is built in, so the
        builder checks them too. Default: every component-valued field, in this component's own context; a component
        that builds a nested one for other channels or another layout (a stem's norm on its output, a head's norm on
        the pooled vector) says so here."""
        found = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Component):
                found.append(((name,), value, ctx))
        return found

    def out_dim(self, dim: int) -> int:
        """Channels out of the module when ``dim`` are asked for (a stem is asked for the first stage's width; one that
        fixes its own, like ResNet's 64-channel stem, returns that instead)."""
        return dim

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        """Spatial size out of the module for ``resolution`` in."""
        return resolution

    @classmethod
    def can_change(cls, stride: int = 1) -> bool:
        """Can this component carry a block's transition (a width change, and ``stride`` when it is > 1)?"""
        if cls.changes_width is not None:
            return cls.changes_width
        takes = {arg for arg in ("out_dim", "in_dim", "stride") if _takes(cls.module, arg) and arg not in cls.model_fields}
        return bool(takes & {"out_dim", "in_dim"}) and (stride == 1 or "stride" in takes)

    def build(self, ctx: Context) -> nn.Module:
        extra: dict[str, Any] = ({"channels_last": ctx.channels_last}
                                 if type(self).layout == "any" and _takes(self.module, "channels_last") else {})
        changed = ctx.out_dim is not None and ctx.out_dim != ctx.dim or ctx.stride != 1
        if changed and type(self).changes_width is None:  # a transition: ``module(in, out_dim=, stride=)`` or
            if ctx.stride != 1:                           # ``module(out, in_dim=, stride=)`` (bottleneck's order)
                extra["stride"] = ctx.stride
            out_dim = ctx.out_dim if ctx.out_dim is not None else ctx.dim
            if _takes(self.module, "out_dim") and "out_dim" not in type(self).model_fields:
                return self.module(ctx.dim, out_dim=out_dim, **self.kwargs(), **extra)
            return self.module(out_dim, in_dim=ctx.dim, **self.kwargs(), **extra)
        return self.module(ctx.dim, **self.kwargs(), **extra)


@functools.lru_cache(maxsize=None)
def _numeric_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """Fields of ``cls`` that take an int or a float and no bool."""
    def kinds(annotation: Any) -> set[Any]:
        if typing.get_origin(annotation) is typing.Annotated:
            return kinds(typing.get_args(annotation)[0])
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            return set().union(*(kinds(a) for a in typing.get_args(annotation)))
        return {annotation}

    found = []
    for name, field in cls.model_fields.items():
        accepted = kinds(field.annotation)
        if accepted & {int, float} and bool not in accepted:
            found.append(name)
    return tuple(found)


@functools.lru_cache(maxsize=None)  # called for every component built; inspect.signature is slow
def _takes(fn: Callable[..., Any], arg: str) -> bool:
    try:
        return arg in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class RegistryError(ValueError):
    """A component cannot be registered as asked (unknown kind, a name already taken, a config that cannot be derived)."""


class PluginError(RegistryError):
    """A plugin (a user's file or module of components) cannot be found or fails while it is imported."""


PLUGINS_ENV = "METABLOCKS_PLUGINS"
PLUGIN_HINT = (f"a component of your own is known once its file is loaded: --plugin my_mixers.py (any metablocks "
               f"command) or {PLUGINS_ENV}=my_mixers.py")


_REGISTRY: dict[str, dict[str, type[Component]]] = {kind: {} for kind in KINDS}
_version = 0


def version() -> int:
    """Bumped on every registration, so schema caches know when to rebuild."""
    return _version


T = TypeVar("T")


def register(kind: str, name: str, *, config: type[Component] | None = None, layout: Layout | None = None,
             replace: bool = False) -> Callable[[T], T]:
    """Register a module class (or factory) as component ``name`` of ``kind``.

    ``config`` is the pydantic config (a ``Component`` subclass); without it one is derived from the
    module's keyword arguments after ``dim``, which must all have type hints and defaults.
    """
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")

    def decorator(module: T) -> T:
        global _version
        if not getattr(module, "__module__", "").startswith(_BUILTIN_PREFIX):
            _load_builtins()  # a user's name that a shipped component has fails here, at the user's call
        taken = _REGISTRY[kind].get(name)
        if taken is not None and not replace and taken.module is not module and not _same_definition(taken.module, module):
            owner = getattr(taken.module, "__module__", "")
            by = (f"shipped with metablocks ({owner}.{taken.module.__qualname__})" if owner.startswith(_BUILTIN_PREFIX)
                  else f"by {owner}.{getattr(taken.module, '__qualname__', taken.module)!s}")
            raise RegistryError(f"{kind} {name!r} is already registered, {by}; give yours another name, or pass "
                                f"replace=True to override it")
        base = config if config is not None else _config_from_signature(module, name)
        if kind == "downsample" and base.tokens == "apply" and not hasattr(module, "forward_prefix"):
            raise RegistryError(f"downsample {name!r} says it takes carried prefix tokens across (tokens = 'apply'), "
                                f"but {getattr(module, '__qualname__', module)!s} has no forward_prefix(prefix) method")
        cls = create_model(base.__name__, __base__=base, __module__=base.__module__,
                           type=(Literal[name], name))  # type: ignore[call-overload]
        cls.__doc__ = (config.__doc__ if config is not None else None) or module.__doc__
        cls.kind, cls.name, cls.module = kind, name, module
        if layout is not None:
            cls.layout = layout
        _REGISTRY[kind][name] = cls
        module.Config = cls  # type: ignore[attr-defined]
        _version += 1
        return module

    return decorator


def _defined_in(obj: Any) -> str | None:
    """The source file of a class's (or function's) code, when it has any."""
    functions = [obj] if hasattr(obj, "__code__") else [v for v in vars(obj).values() if hasattr(v, "__code__")] \
        if isinstance(obj, type) else []
    return functions[0].__code__.co_filename if functions else None


def _same_definition(old: Any, new: Any) -> bool:
    """The same class from the same file, run again (a plugin file that is also run as a script, runpy, a reload):
    it replaces its earlier self instead of clashing with it."""
    file = _defined_in(new)
    return file is not None and file == _defined_in(old) and getattr(old, "__qualname__", None) == getattr(
        new, "__qualname__", None)


def _config_from_signature(module: Callable[..., Any], name: str) -> type[Component]:
    params = list(inspect.signature(module).parameters.values())
    fields: dict[str, Any] = {}
    for p in params[1:]:  # the first parameter is the channel count, given by the builder
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "channels_last":
            continue
        if p.annotation is p.empty or p.default is p.empty:
            raise RegistryError(f"cannot derive a config for {name!r}: parameter {p.name!r} needs a type hint and a "
                                f"default (or pass config=...)")
        fields[p.name] = (p.annotation, p.default)
    title = "".join(part.title() for part in name.split("_")) + "Config"
    return create_model(title, __base__=Component, __doc__=module.__doc__, **fields)  # type: ignore[call-overload]


def get(kind: str, name: str) -> type[Component]:
    return _REGISTRY[kind][name]


def names(kind: str) -> list[str]:
    load_plugins()
    return sorted(_REGISTRY[kind])


def configs(kind: str) -> list[type[Component]]:
    load_plugins()
    return [_REGISTRY[kind][n] for n in sorted(_REGISTRY[kind])]


_BUILTIN_PREFIX = "metablocks."
_builtins_loaded = False
_entry_points_loaded: set[str] = set()
_env_seen: str | None = None
_plugins_loaded: dict[str, str] = {}  # the plugin as given -> the file or module it loaded


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    import pkgutil

    _builtins_loaded = True
    from metablocks import components

    for info in pkgutil.walk_packages(components.__path__, components.__name__ + "."):
        importlib.import_module(info.name)


def load_plugins(refresh: bool = False) -> None:
    """Import the built-in components once, every ``metablocks.components`` entry point and every plugin named in
    ``METABLOCKS_PLUGINS`` not loaded yet.

    ``refresh=True`` looks for entry points again (after installing a plugin in a running process).
    """
    global _env_seen
    env = os.environ.get(PLUGINS_ENV, "")
    if _builtins_loaded and not refresh and env == _env_seen:
        return
    if not _builtins_loaded or refresh:
        from importlib.metadata import entry_points

        _load_builtins()
        for ep in entry_points(group="metablocks.components"):
            if ep.value not in _entry_points_loaded:
                _entry_points_loaded.add(ep.value)
                ep.load()
    _env_seen = env
    for plugin in plugin_list(env):
        load_plugin(plugin)


def plugin_list(text: str) -> list[str]:
    """The plugins named in a ``METABLOCKS_PLUGINS`` value (separated by ``os.pathsep``, blanks ignored)."""
    return [part.strip() for part in text.split(os.pathsep) if part.strip()]


def load_plugin(plugin: str | Path) -> str:
    """Import a user's components: a Python file (``my_mixers.py``, ``path/to/mixers.py``) or an importable module
    (``my_pkg.mixers``; the working directory is searched too). Each is loaded once per process; returns what was
    loaded. Raises PluginError naming the plugin when it is not found or fails while it is imported."""
    given = str(plugin)
    if given in _plugins_loaded:
        return _plugins_loaded[given]
    _load_builtins()
    path = Path(given).expanduser()
    looks_like_file = given.endswith(".py") or os.sep in given or path.is_file()
    if looks_like_file:
        if not path.is_file():
            raise PluginError(f"plugin file {given!r} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
        path = path.resolve()
        loaded = str(path)
        if loaded not in _plugins_loaded.values():
            module_name = f"metablocks_plugin_{path.stem}_{zlib.crc32(loaded.encode()):08x}"  # same in every process
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[module_name]
                raise PluginError(_failure(given, err, str(path))) from err
    else:
        loaded = given
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.append(cwd)
        try:
            importlib.import_module(given)
        except ModuleNotFoundError as err:
            if err.name and given.startswith(err.name):
                raise PluginError(f"plugin {given!r} is neither a file nor an importable module (no module named "
                                  f"{err.name!r}; a file needs its .py)") from None
            raise PluginError(_failure(given, err, None)) from err
        except Exception as err:
            raise PluginError(_failure(given, err, None)) from err
        finally:
            if added:
                sys.path.remove(cwd)
    _plugins_loaded[given] = loaded
    return loaded


def _failure(given: str, err: BaseException, file: str | None) -> str:
    """``plugin 'x.py' failed while it was imported: NameError: ... (at x.py:12: <code>)``: the innermost place in
    the plugin's own code (else the innermost place at all)."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if file is None or f.filename == file] or frames
    where = ""
    if mine:
        frame = mine[-1]
        where = f" (at {frame.filename}:{frame.lineno}" + (f": {frame.line.strip()}" if frame.line else "") + ")"
    message = str(err).strip()
    return f"plugin {given!r} failed while it was imported: {type(err).__name__}" + (f": {message}" if message else "") + where


class Ref:
    """Pydantic field type for "a component of ``kind``": ``act: Annotated[Component, Ref("act")] = "gelu"``.

    Accepts a registered name or a mapping with ``type:``, validates it with that component's config
    at validation time (so components registered later are valid at once), and in the JSON Schema
    expands to the union of every registered config of the kind, discriminated by ``type``.

    ``Ref(("token_mixer", "channel_mixer", ...))`` takes a component of any of those kinds (a block's named slot): the
    ``type`` is looked up in each, and a name registered under several needs ``kind:`` beside it.
    """

    def __init__(self, kind: str | tuple[str, ...]) -> None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        for k in kinds:
            if k not in KINDS:
                raise RegistryError(f"unknown component kind {k!r}; kinds are: {', '.join(KINDS)}")
        self.kinds = kinds
        self.kind = " or ".join(kinds)

    def validate(self, value: Any) -> Component:
        if isinstance(value, Component):
            if value.kind not in self.kinds:
                raise PydanticCustomError("component_kind", "expected a {kind}, got the {given} {name}",
                                          {"kind": self.kind, "given": value.kind, "name": repr(value.name)})
            return value
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            raise PydanticCustomError("component_type", "expected a {kind} name or a mapping with 'type:', got {given}",
                                      {"kind": self.kind, "given": type(value).__name__})
        load_plugins()
        kinds = self.kinds
        if len(kinds) > 1 and "kind" in value:
            given_kind = value["kind"]
            if given_kind not in kinds:
                raise PydanticCustomError("component_kind", "kind {given} is not allowed here; allowed: {allowed}",
                                          {"given": repr(given_kind), "allowed": ", ".join(kinds)})
            kinds, value = (given_kind,), {k: v for k, v in value.items() if k != "kind"}
        if "type" not in value:
            raise PydanticCustomError("component_missing_type", "a {kind} needs 'type:'; allowed: {allowed}",
                                      {"kind": self.kind, "allowed": ", ".join(self._names(kinds))})
        name = value["type"]
        found = [k for k in kinds if isinstance(name, str) and name in _REGISTRY[k]]
        if len({_REGISTRY[k][name].module for k in found}) == 1:
            found = found[:1]  # one component registered under several kinds (the block composite): no ambiguity
        if not found:
            allowed = self._names(kinds)
            hint = did_you_mean(str(name), allowed)
            raise PydanticCustomError("unknown_component", "unknown {kind} {given}{hint}; allowed: {allowed}{plugins}",
                                      {"kind": " or ".join(kinds), "given": repr(name), "hint": hint,
                                       "allowed": ", ".join(allowed), "plugins": "" if hint else f" ({PLUGIN_HINT})"})
        if len(found) > 1:
            raise PydanticCustomError("ambiguous_component", "{given} is registered as {kinds}: say which with kind: "
                                      "({options})", {"given": repr(name), "kinds": ", ".join(found),
                                                      "options": " | ".join(found)})
        try:
            return _REGISTRY[found[0]][name].model_validate(value)
        except ValidationError as err:
            raise PydanticCustomError("invalid_component", "invalid {kind} {name}",
                                      {"kind": found[0], "name": repr(name), "errors": err.errors(include_url=False)}) from None

    @staticmethod
    def _names(kinds: tuple[str, ...]) -> list[str]:
        return sorted({n for k in kinds for n in names(k)})

    def serialize(self, value: Any) -> Any:
        if not isinstance(value, Component):
            return value
        dumped = value.dump()
        if len(self.kinds) > 1 and len({_REGISTRY[k][value.name].module for k in self.kinds if value.name in _REGISTRY[k]}) > 1:
            return {"kind": value.kind, **dumped}  # the name alone would not say which
        return dumped

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.validate, serialization=core_schema.plain_serializer_function_ser_schema(self.serialize, when_used="always"))

    _in_progress: ClassVar[set[str]] = set()  # kinds whose schema is being written (a block component holds mixers)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        if self.kind in Ref._in_progress:  # a component inside a component of its own kind: named, not expanded again
            return {"anyOf": [{"type": "string", "description": f"a {self.kind} by name"},
                              {"type": "object", "required": ["type"], "description": f"a {self.kind} (see above)"}]}
        Ref._in_progress.add(self.kind)
        try:
            return self._json_schema(schema, handler)
        finally:
            Ref._in_progress.discard(self.kind)

    def _json_schema(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        if len(self.kinds) > 1:
            return {"anyOf": [Ref(k).__get_pydantic_json_schema__(schema, handler) for k in self.kinds]}
        choices = {cfg.name: cfg.__pydantic_core_schema__ for cfg in configs(self.kinds[0])}
        union = handler(core_schema.tagged_union_schema(choices, discriminator="type"))  # type: ignore[arg-type]
        for cfg in configs(self.kinds[0]):  # each choice: ``type`` is required here, titled and described as the component
            entry = handler.resolve_ref_schema({"$ref": union["discriminator"]["mapping"][cfg.name]})
            entry["title"] = f"{cfg.name} ({self.kind})"
            entry["required"] = ["type", *(name for name in entry.get("required", []) if name != "type")]
            doc = cfg.module.__doc__ or cfg.__doc__
            if doc:
                entry["description"] = inspect.cleandoc(doc)
        shorthand = {"type": "string", "enum": list(choices), "description": f"a {self.kind} by name, all defaults"}
        return {"anyOf": [shorthand, union]}


def did_you_mean(given: str, allowed: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(given, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
