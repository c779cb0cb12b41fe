"""Weights from official (non-timm) code bases: one module per family, each mapping the official state_dict keys to
ours and registering itself with ``@official(family, source=...)``; ``convert_official`` loads a checkpoint strictly.

    model = convert_official("biformer_tiny_in1k.pth", "biformer_tiny")     # a loaded MetaModel
    metablocks convert biformer_tiny_in1k.pth --recipe biformer_tiny -o biformer_tiny.safetensors

A family is a recipe folder (``recipes/<family>/``). A converter takes the official state_dict (and the built model,
for transforms that need its shapes) and returns our keys; it never drops a key silently: official keys that have
no place in our model on purpose (a training-only auxiliary head, index buffers we rebuild) are named by the
``drops`` patterns of its registration and reported. Everything else must land: a key that cannot be placed, one
of ours left missing or a shape that differs is an error that lists them. Adding a family is adding a module here.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

Converter = Callable[..., dict[str, Tensor]]  # (official state_dict, model) -> our state_dict


@dataclass(frozen=True)
class Official:
    """One family's converter: where its official weights come from and which of their keys have no place here."""

    family: str
    convert: Converter
    source: str  # the official repository and file whose state_dict layout this reads
    drops: tuple[str, ...] = ()  # regexes of official keys left out on purpose (each reported)
    reader: Callable[[Path], Mapping[str, Any]] | None = None  # a non-torch checkpoint format (MOAT's TF variables)


_FAMILIES: dict[str, Official] = {}


def official(family: str, *, source: str, drops: tuple[str, ...] = (),
             reader: Callable[[Path], Mapping[str, Any]] | None = None) -> Callable[[Converter], Converter]:
    """Register ``convert(state_dict, model=None) -> our state_dict`` as the official converter of ``family``."""
    def decorate(convert: Converter) -> Converter:
        if family in _FAMILIES and _FAMILIES[family].convert is not convert:
            raise ValueError(f"the official converter of {family!r} is registered twice "
                             f"({_FAMILIES[family].convert.__module__} and {convert.__module__})")
        _FAMILIES[family] = Official(family, convert, source, tuple(drops), reader)
        return convert
    return decorate


def families() -> dict[str, Official]:
    """Every registered official converter, by family (imports each module of this package once)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(_FAMILIES.items()))


def family_of(recipe: str | Path) -> str | None:
    """The recipe folder a shipped recipe name, or a recipe file, belongs to: its own folder when it is inside the
    shipped recipes, else the folder of the shipped recipe it ``extends`` (followed through user files)."""
    from metablocks.recipe.loader import _parsed, recipes_dir, shipped_recipes

    root = recipes_dir().resolve()
    shipped = shipped_recipes()
    by_file = {p.name: p for p in root.rglob("*.yaml")}
    path = shipped.get(str(recipe)) if str(recipe) in shipped else Path(recipe)
    seen: set[Path] = set()
    while path is not None and path.is_file() and path.resolve() not in seen:
        path = path.resolve()
        seen.add(path)
        if root in path.parents:
            return path.relative_to(root).parts[0]
        base = _parsed(path).get("extends")
        if not base:
            return None
        name = str(base) if str(base).endswith(".yaml") else f"{base}.yaml"
        local = path.parent / name
        path = local if local.is_file() else (shipped.get(str(base)) or by_file.get(name))
    return None


class OfficialWeightsError(ValueError):
    """An official checkpoint that does not fit the recipe model; the message lists the keys."""


@dataclass
class Conversion:
    """What ``convert_official_state_dict`` made of an official state_dict."""

    family: str
    state_dict: dict[str, Tensor]
    dropped: list[str]  # official keys left out on purpose (the family's ``drops`` patterns)

    def dropped_params(self, official_state: Mapping[str, Any]) -> int:
        return sum(int(getattr(official_state[k], "numel", lambda: 0)()) for k in self.dropped)


def _converter(family: str) -> Official:
    known = families()
    if family not in known:
        raise OfficialWeightsError(f"no official converter for the {family!r} family; the families with one are: "
                                   f"{', '.join(known)} (timm families load with metablocks.load_pretrained)")
    return known[family]


def convert_official_state_dict(state_dict: Mapping[str, Any], model: nn.Module, family: str) -> Conversion:
    """Official keys -> ours, with the family's intentional drops taken out first (nothing is loaded)."""
    entry = _converter(family)
    drops = [re.compile(p) for p in entry.drops]
    dropped = sorted(k for k in state_dict if any(p.search(k) for p in drops))
    kept = {k: v for k, v in state_dict.items() if k not in set(dropped)}
    return Conversion(family, dict(entry.convert(kept, model)), dropped)


def _group(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_converted(model: nn.Module, conversion: Conversion, *, source: str = "the official checkpoint") -> None:
    """Load strictly, or raise OfficialWeightsError naming every key that could not be placed, is missing or misfits."""
    from metablocks.interop.timm import state_mismatch

    ours = model.state_dict()
    theirs = dict(conversion.state_dict)
    for key in ours:  # BatchNorm's step counter, which older checkpoints (and TF) do not have, is not a weight
        if key.endswith("num_batches_tracked") and key not in theirs:
            theirs[key] = ours[key]
    missing, unplaced, wrong = state_mismatch(ours, theirs)
    if unplaced or missing or wrong:
        lines = []
        if unplaced:
            lines.append(f"could not place {len(unplaced)} key(s) (after conversion): {_group(unplaced)}")
        if missing:
            lines.append(f"the model's {len(missing)} key(s) not in {source}: {_group(missing)}")
        if wrong:
            lines.append("shape mismatch: " + _group([f"{k} ours {tuple(ours[k].shape)} vs official "
                                                      f"{tuple(theirs[k].shape)}" for k in wrong]))
        raise OfficialWeightsError(f"{source} does not fit this {conversion.family} model:\n  " + "\n  ".join(lines))
    model.load_state_dict(theirs, strict=True)


def read_official(path: str | Path, family: str, *, key: str | None = None) -> dict[str, Any]:
    """An official checkpoint file as a flat mapping: the family's own reader, or a torch/safetensors state_dict
    (``key`` picks a nested dict such as ``model_ema``; by default ``state_dict_ema``/``state_dict``/``model``)."""
    import torch

    path = Path(path)
    entry = _converter(family)
    if entry.reader is not None:
        return dict(entry.reader(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if key is None:
        from metablocks.interop.timm import read_checkpoint

        return read_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get(key), dict):
        found = ", ".join(k for k, v in state.items() if isinstance(v, dict)) if isinstance(state, dict) else "none"
        raise OfficialWeightsError(f"{path} has no state_dict under {key!r} (dicts in the file: {found or 'none'})")
    return {k.removeprefix("module."): v for k, v in state[key].items()}


def convert_official(source: str | Path | Mapping[str, Any], recipe: Any, *, family: str | None = None,
                     key: str | None = None, **fields: Any) -> nn.Module:
    """Build ``recipe`` (a shipped name, file, or a built model) and load an official checkpoint (a file or a
    state_dict) into it strictly; returns the model in eval mode, with ``model.official_dropped`` listing the
    official keys left out on purpose. ``fields`` go to ``build_model`` (``num_classes=...``)."""
    import metablocks

    if isinstance(recipe, nn.Module):
        model, name = recipe, getattr(getattr(recipe, "recipe", None), "name", None)
    else:
        model, name = metablocks.build_model(recipe, **fields), getattr(recipe, "name", recipe)
    family = family or (family_of(name) if name is not None else None)
    if family is None:
        raise OfficialWeightsError(f"cannot tell which family {name!r} belongs to (it is not a shipped recipe and "
                                   f"extends none); name it: family=... / --family")
    state = read_official(source, family, key=key) if isinstance(source, (str, Path)) else dict(source)
    conversion = convert_official_state_dict(state, model, family)
    load_converted(model, conversion, source=f"the official {family} weights")
    model.official_dropped = conversion.dropped
    return model.eval()
