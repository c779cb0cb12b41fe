"""timm -> metablocks weights: ``load_timm_state_dict(model, timm_model.state_dict())``, and fine-tuning from a local
checkpoint: ``load_pretrained(model, "weights.safetensors")`` (a classifier of another size stays fresh).

Module names follow timm's, so a family's mapping is a few renames (``KEY_RENAMES``); tensors whose layout
differs (a 1x1 conv where timm has a linear layer) are reshaped. Loading is strict: a missing or an
unexpected key is an error naming the keys.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping

import torch
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
    _load_strict(model, convert_state_dict(state_dict, model, timm_name), source="the timm weights", theirs="timm")
    return model


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A state_dict from a ``.safetensors`` file or a torch checkpoint (``.pth``, ``.pt``, ``.bin``; timm's train.py
    checkpoints keep it under ``state_dict``/``model``, DDP prefixes ``module.`` are dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    return {k.removeprefix("module."): v for k, v in state.items()}


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A first conv's (out, 3, kh, kw) weight for ``in_chans`` input channels, as timm's ``adapt_input_conv``: summed
    over the RGB channels for one channel, else tiled and scaled by 3 / in_chans."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_pretrained(model: nn.Module, source: str | Path | Mapping[str, Tensor], *, strict: bool = False,
                    timm_name: str | None = None) -> list[str]:
    """Load a timm or metablocks checkpoint (file or state_dict) into ``model``; returns the keys left as initialized.

    timm's state_dicts are converted (``convert_state_dict``); ours load as they are. Unless ``strict``, a
    classifier of another shape (another ``num_classes``) is left freshly initialized and the first conv is adapted
    to the model's ``in_chans`` (timm's ``pretrained=True, num_classes=10, in_chans=1``); every other weight must
    fit, or the error names the ones that do not.
    """
    state = dict(read_checkpoint(source) if isinstance(source, (str, Path)) else source)
    ours = model.state_dict()
    if not set(ours) <= set(state) | _classifier_keys(model, ours):
        state = convert_state_dict(state, model, timm_name)
    kept: list[str] = []
    if not strict:
        cfg = getattr(model, "pretrained_cfg", {})
        first = f"{cfg.get('first_conv')}.weight"
        if first in state and first in ours and state[first].shape != ours[first].shape and state[first].ndim == 4 \
                and state[first].shape[0] == ours[first].shape[0]:
            state[first] = adapt_input_conv(state[first], ours[first].shape[1])
        for key in _classifier_keys(model, ours):
            if key not in state or state[key].shape != ours[key].shape:
                state.pop(key, None)
                state[key] = ours[key]
                kept.append(key)
    _load_strict(model, state)
    return sorted(kept)


def _classifier_keys(model: nn.Module, ours: Mapping[str, Tensor]) -> set[str]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    return {k for k in ours if classifier and k.startswith(classifier + ".")}


def state_mismatch(ours: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(our keys ``state`` lacks, its keys we lack, keys whose shapes differ), each sorted."""
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    wrong = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
    return missing, unexpected, wrong


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str = "the checkpoint",
                 theirs: str = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)``, or a ValueError listing what is missing, extra or misshapen."""
    ours = model.state_dict()
    missing, unexpected, wrong = state_mismatch(ours, state)
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing in {source} ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            lines.append(f"not in our model ({len(unexpected)}): {', '.join(unexpected[:8])}")
        if wrong:
            lines.append("shape mismatch: " + ", ".join(f"{k} ours {tuple(ours[k].shape)} vs {theirs} {tuple(state[k].shape)}"
                                                        for k in wrong[:8]))
        raise ValueError(f"{source} do{'es' if source == 'the checkpoint' else ''} not fit this model:\n  "
                         + "\n  ".join(lines))
    model.load_state_dict(state, strict=True)
