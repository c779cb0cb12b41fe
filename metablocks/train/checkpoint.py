"""Training checkpoints and saved models as safetensors files that carry their own SHA-256 checksum.

safetensors holds only tensors (no pickled code runs on load); everything else is JSON metadata. Every file written
here has a ``sha256`` metadata entry: the digest of each tensor (name, dtype, shape, bytes) and of every other
metadata entry. Loading verifies it, so a truncated file, a flipped byte or a damaged header raises CorruptFile
instead of training (or reporting) on garbage; a file without the checksum counts as corrupt too.

Files are written to a temporary name (``.NAME.PID.tmp``) and renamed, so a file is always either the old one or
the new one, never half written. Before a new checkpoint replaces the last one, the last one is kept as
``checkpoint.prev.safetensors``: ``resume`` loads the newest checkpoint that verifies, deletes (with a note) the ones
that do not, and returns None when none is left, so the run restarts from the checkpoint before or from scratch.
``remove_stale_temps`` deletes the temporary files that killed writes leave behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

MODEL, OPTIM, EXTRA = "model.", "optim.", "extra."
MODEL_FILE = "model.safetensors"
CHECKSUM = "sha256"
TEMP_GLOB = ".*.tmp"


class CorruptFile(ValueError):
    """A safetensors file that cannot be read or whose checksum does not match; the message says which and why."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the ``.NAME.PID.tmp`` files of writes that were killed; returns what was removed."""
    removed = []
    for tmp in Path(directory).glob(TEMP_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes and every metadata entry (the checksum aside)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    for key in sorted(k for k in metadata if k != CHECKSUM):
        h.update(f"{key}={metadata[key]}|".encode())
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *,
                 keep_previous: Path | None = None) -> None:
    """Write ``tensors`` with their checksum, atomically; an existing ``path`` is first renamed to
    ``keep_previous`` when given."""
    path = Path(path)
    metadata = {**(metadata or {})}
    metadata[CHECKSUM] = digest(tensors, metadata)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if keep_previous is not None and path.is_file():
        os.replace(path, keep_previous)
    os.replace(tmp, path)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file ``save_tensors`` wrote, verified; CorruptFile if it cannot be trusted."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors' own errors (truncated, bad header) are not one exception type
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptFile(f"{path} is not a readable safetensors file ({reason})") from None
    if CHECKSUM not in metadata:
        raise CorruptFile(f"{path} has no {CHECKSUM} checksum (damaged, or written by an older metablocks)")
    if digest(tensors, metadata) != metadata[CHECKSUM]:
        raise CorruptFile(f"{path} does not match its {CHECKSUM} checksum (flipped bytes or a damaged header)")
    return tensors, metadata


def save_model(path: Path, model: nn.Module) -> None:
    """The model's state dict as a checksummed safetensors file (plain timm-style names)."""
    save_tensors(path, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict ``save_model`` wrote, verified (CorruptFile otherwise)."""
    return load_tensors(path)[0]


def previous_of(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.prev.safetensors`` beside it."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


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
    save_tensors(path, tensors, metadata, keep_previous=previous_of(path))


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: torch.amp.GradScaler | None, device: torch.device,
                    extra: nn.Module | None = None) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the saved ``state``. The file is verified before
    anything is restored (CorruptFile, with nothing changed, if it does not verify). ``extra`` takes the ``extra``
    tensors (the EMA model's weights)."""
    tensors, metadata = load_tensors(path)
    model.load_state_dict({k[len(MODEL):]: v for k, v in tensors.items() if k.startswith(MODEL)})
    if extra is not None:
        extra.load_state_dict({k[len(EXTRA):]: v for k, v in tensors.items() if k.startswith(EXTRA)})
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


def resume(path: Path, *, notes: list[str] | None = None, **restore: Any) -> dict[str, Any] | None:
    """Load the newest good checkpoint (``path``, else the one before it) into the objects in ``restore`` (as for
    ``load_checkpoint``) and return its state; a corrupt one is deleted with a note (appended to ``notes`` and
    printed to stderr). None when there is no good checkpoint: train from scratch."""
    notes = notes if notes is not None else []
    discarded = False
    for candidate in (path, previous_of(path)):
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate, **restore)
        except CorruptFile as err:
            candidate.unlink(missing_ok=True)
            discarded = True
            _note(notes, f"{err}: discarded")
            continue
        if discarded:
            _note(notes, f"resuming from {candidate.name} (epoch {state['epoch']})")
        return state
    if discarded:
        _note(notes, "no good checkpoint left: training from scratch")
    return None


def _note(notes: list[str], message: str) -> None:
    notes.append(message)
    print(f"note: {message}", file=sys.stderr, flush=True)


def load_extra(path: Path) -> dict[str, torch.Tensor]:
    """The ``extra`` tensors ``save_checkpoint`` was given, verified."""
    return {key[len(EXTRA):]: value for key, value in load_tensors(path)[0].items() if key.startswith(EXTRA)}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Only the model's state dict from a checkpoint, verified."""
    tensors, _ = load_tensors(path)
    return {key[len(MODEL):]: value for key, value in tensors.items() if key.startswith(MODEL)}
