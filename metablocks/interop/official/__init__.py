"""Weights from official (non-timm) code bases: one module per family, each mapping the official state_dict keys to
ours (``convert_<family>``) and loading them strictly (``load_<family>``)."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from torch import Tensor


def renamed(state_dict: Mapping[str, Tensor], renames: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """``state_dict`` with every key passed through the (regex, replacement) pairs in order; tensors unchanged."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out
