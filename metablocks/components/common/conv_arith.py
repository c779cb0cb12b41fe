"""Output size of a strided convolution or pooling window, shared by stems and downsamplers."""
from __future__ import annotations


def conv_out(size: tuple[int, int], kernel_size: int, stride: int, padding: int) -> tuple[int, int]:
    return tuple((s + 2 * padding - kernel_size) // stride + 1 for s in size)  # type: ignore[return-value]


def too_small(resolution: tuple[int, int] | None, out: tuple[int, int] | None, what: str) -> list[str]:
    """The check of a strided op: a map it would shrink to nothing is a problem (``what``: the op, for the message)."""
    if resolution and out is not None and min(out) < 1:
        return [f"a {resolution[0]}x{resolution[1]} map is too small for a {what}"]
    return []
