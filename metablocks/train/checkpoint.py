"""Training checkpoints as one safetensors file: model and optimizer tensors, everything else as JSON metadata.

safetensors holds only tensors (no pickled code runs on load); the file is written to a temporary name and
renamed, so a checkpoint is always either the old one or the new one, never half written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

MODEL, OPTIM, EXTRA = "model.", "optim.", "extra."


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: torch.amp.GradScaler | None, state: dict[str, Any],
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """``extra``: more tensors to keep with the checkpoint (the EMA weights), read back by ``load_extra``."""
    tensors = {MODEL + k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    tensors.update({EXTRA + k: v.detach().cpu().clone().contiguous() for k, v in (extra or {}).items()})
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optim["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIM}{index}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "state": json.dumps(state),
        "optim_groups": json.dumps(optim["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: torch.amp.GradScaler | None, device: torch.device) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the saved ``state``."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    model.load_state_dict({k[len(MODEL):]: v for k, v in tensors.items() if k.startswith(MODEL)})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM):
            index, name = key[len(OPTIM):].split(".", 1)
            state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    for index, entry in json.loads(metadata["optim_scalars"]).items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["optim_groups"])})
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    saved_scaler = json.loads(metadata["scaler"])
    if scaler is not None and saved_scaler is not None:
        scaler.load_state_dict(saved_scaler)
    return json.loads(metadata["state"])


def load_extra(path: Path) -> dict[str, torch.Tensor]:
    """The ``extra`` tensors ``save_checkpoint`` was given."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {key[len(EXTRA):]: f.get_tensor(key) for key in f.keys() if key.startswith(EXTRA)}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Only the model's state dict from a checkpoint."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {key[len(MODEL):]: f.get_tensor(key) for key in f.keys() if key.startswith(MODEL)}
