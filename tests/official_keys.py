"""Helpers for the official-checkpoint converter tests: the committed key/shape manifests of official state_dicts
(tests/data/<family>_official_keys.json, written once by running the official code outside the repository)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def manifest(family: str) -> dict:
    """``{"source": ..., "models": {recipe: {"params": n, "keys": [[key, shape], ...]}}}``."""
    return json.loads((DATA / f"{family}_official_keys.json").read_text())


def zero_state(family: str, recipe: str) -> dict[str, torch.Tensor]:
    """The official state_dict of ``recipe`` as zero tensors of the manifest's shapes (integer buffers stay integer)."""
    return {key: torch.zeros(shape, dtype=torch.long) if key.endswith("num_batches_tracked") else torch.zeros(shape)
            for key, shape in manifest(family)["models"][recipe]["keys"]}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
