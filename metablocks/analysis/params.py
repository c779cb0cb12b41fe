"""Parameter counts: the whole model and its parts (stem, each stage, head)."""
from __future__ import annotations

from torch import nn


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once), as papers report them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level parts, with containers (``stages``) opened into their items (``stages.0``, ...).

    For a MetaModel: ``stem``, ``stages.0`` ... ``stages.{n-1}``, ``head``.
    """
    out = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            out += [(f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children()]
        else:
            out.append((name, child))
    return out


def params_by_stage(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part (see ``parts``); parameters held by the model itself go under ``other``."""
    counts = {name: count_params(part) for name, part in parts(model)}
    rest = count_params(model) - sum(counts.values())
    if rest:
        counts["other"] = rest
    return counts
