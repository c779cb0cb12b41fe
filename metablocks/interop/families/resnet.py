"""timm ResNet (``resnet*``) -> metablocks keys.

timm's stem is flat (``conv1``, ``bn1``), its stages are ``layer1..4`` of blocks ``0..n-1`` with the projection in
``layer{i}.0.downsample`` (0 conv, 1 BN), and the classifier is ``fc``. Ours: stage ``i - 1``, ``blocks.j``, the convs
under ``token_mixer`` and the first block's projection under ``shortcut`` (conv, norm).
"""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.timm import register_converter

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")
_SHORTCUT = {"downsample.0.": "shortcut.conv.", "downsample.1.": "shortcut.norm."}


def resnet_key(key: str) -> str:
    """One timm ResNet key -> ours (``layer2.0.downsample.1.weight`` -> ``stages.1.blocks.0.shortcut.norm.weight``)."""
    if key.startswith(("conv1.", "bn1.")):
        return f"stem.{key}"
    if key.startswith("fc."):
        return f"head.{key}"
    match = _BLOCK.match(key)
    if match is None:
        return key
    stage, block, rest = int(match[1]) - 1, int(match[2]), match[3]
    for theirs, ours in _SHORTCUT.items():
        if rest.startswith(theirs):
            return f"stages.{stage}.blocks.{block}.{ours}{rest[len(theirs):]}"
    return f"stages.{stage}.blocks.{block}.token_mixer.{rest}"


@register_converter("resnet")
def convert_resnet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {resnet_key(key): value for key, value in state_dict.items()}
