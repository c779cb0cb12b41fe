"""timm -> metablocks weights: ``load_timm_state_dict(model, timm_model.state_dict())``.

Module names follow timm's, so a family's mapping is a few renames (``KEY_RENAMES``); tensors whose layout
differs (a 1x1 conv where timm has a linear layer) are reshaped. Loading is strict: a missing or an
unexpected key is an error naming the keys.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from torch import Tensor, nn

# (pattern, replacement) applied in order to every timm key; families add theirs with ``add_renames``.
KEY_RENAMES: list[tuple[str, str]] = [
    (r"\.mlp\.", ".channel_mixer."),  # MetaFormer blocks: timm's mlp is our channel_mixer
]
_CONVERTERS: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {}


def add_renames(*pairs: tuple[str, str]) -> None:
    """Register more timm -> metablocks key renames (regex, replacement)."""
    KEY_RENAMES.extend(pairs)


def register_converter(timm_prefix: str) -> Callable:
    """Register a whole-state_dict converter for timm models whose name starts with ``timm_prefix``."""

    def decorator(fn: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> Callable:
        _CONVERTERS[timm_prefix] = fn
        return fn

    return decorator


def _load_families() -> None:
    """Import every module of metablocks/interop/families (each registers its family's converter)."""
    import importlib
    import pkgutil

    from metablocks.interop import families

    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f"{families.__name__}.{info.name}")


def convert_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module, timm_name: str | None = None) -> dict[str, Tensor]:
    """timm keys -> our keys (renames, then a family converter if one is registered), tensors reshaped to ours."""
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, replacement in KEY_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    _load_families()
    name = timm_name or getattr(getattr(model, "recipe", None), "timm_name", None) or ""
    for prefix, fn in sorted(_CONVERTERS.items(), key=lambda item: -len(item[0])):
        if name.startswith(prefix):
            converted = fn(converted)
            break
    ours = model.state_dict()
    for key, value in converted.items():
        if key in ours and value.shape != ours[key].shape and value.numel() == ours[key].numel():
            converted[key] = value.reshape(ours[key].shape)
    return converted


def load_timm_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], timm_name: str | None = None) -> nn.Module:
    """Load a timm state_dict into ``model`` strictly (no missing or unexpected keys); returns the model."""
    converted = convert_state_dict(state_dict, model, timm_name)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(converted))
    unexpected = sorted(set(converted) - set(ours))
    wrong = sorted(k for k in set(ours) & set(converted) if ours[k].shape != converted[k].shape)
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing in the timm weights ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            lines.append(f"not in our model ({len(unexpected)}): {', '.join(unexpected[:8])}")
        if wrong:
            lines.append("shape mismatch: " + ", ".join(f"{k} ours {tuple(ours[k].shape)} vs timm "
                                                        f"{tuple(converted[k].shape)}" for k in wrong[:8]))
        raise ValueError("timm weights do not fit this model:\n  " + "\n  ".join(lines))
    model.load_state_dict(converted, strict=True)
    return model
