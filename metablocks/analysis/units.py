"""Human-readable counts: 11915176 -> "11.9M", 1822555648 -> "1.8G"."""
from __future__ import annotations


def human(count: float, digits: int = 1) -> str:
    """``count`` with a K/M/G/T suffix and ``digits`` decimals (no suffix below a thousand)."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.{digits}f}{suffix}"
    return f"{count:g}"
