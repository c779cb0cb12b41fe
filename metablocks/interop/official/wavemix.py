"""Official WaveMix weights (pranavphoenix/WaveMix ``wavemix/classification.py`` + ``wavemix/__init__.py``; the
released ImageNet ``wavemix_192_16_75.06.pth`` is a plain state_dict) -> metablocks keys.

The official model is ``conv`` (the "pachify" stem: conv 3x3, conv 3x3, conv 4x4 s4, GELU, BN), ``layers.i``
(Level3Waveblocks: ``reduction`` and ``feedforward1..3``, Sequentials we keep index for index) and ``pool.2`` (the
classifier after the average pool). The Haar DWT filters are module-level constants there and fixed buffers here,
so neither state_dict holds them. No tensor changes.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official

RENAMES: list[tuple[str, str]] = [
    (r"^conv\.", "stem.conv."),
    (r"^layers\.(\d+)\.", r"stages.0.blocks.\1.token_mixer."),  # x = x + waveblock(x): the block's one residual
    (r"^pool\.2\.", "head.fc."),  # AdaptiveAvgPool2d, Rearrange, Linear
]


@official("wavemix", source="pranavphoenix/WaveMix wavemix/classification.py")
def convert_wavemix(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official WaveMix keys -> ours (tensors unchanged: every layer has the official shape)."""
    return rename(dict(state_dict), RENAMES)
