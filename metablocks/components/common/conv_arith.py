"""Output size of a strided convolution or pooling window, shared by stems and downsamplers."""
from __future__ import annotations


def conv_out(size: tuple[int, int], kernel_size: int, stride: int, padding: int) -> tuple[int, int]:
    return tuple((s + 2 * padding - kernel_size) // stride + 1 for s in size)  # type: ignore[return-value]
