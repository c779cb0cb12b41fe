"""Channel layouts and the one permute between them."""
from __future__ import annotations

from torch import Tensor

from metablocks.registry import Layout

_PERMUTES = {("channels_first", "channels_last"): (0, 2, 3, 1), ("channels_last", "channels_first"): (0, 3, 1, 2)}


def permutation(src: Layout, dst: Layout) -> tuple[int, ...] | None:
    """The permute taking a 4-D tensor from ``src`` to ``dst`` layout; None when nothing is to be done."""
    return _PERMUTES.get((src, dst))


def to_layout(x: Tensor, src: Layout, dst: Layout) -> Tensor:
    dims = permutation(src, dst)
    return x if dims is None else x.permute(dims)


def resolve(wanted: Layout, default: Layout) -> Layout:
    """The layout a component works in: its own, or ``default`` for layout-agnostic ("any") ones."""
    return default if wanted == "any" else wanted
