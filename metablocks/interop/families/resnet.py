"""timm ResNet (``resnet*``) and ResNet-D / ECA-ResNet (``ecaresnet*``) -> metablocks keys.

timm's stem is flat (``conv1``, ``bn1``), or for a deep stem (``stem_type='deep'``/``'deep_tiered'``) a Sequential
``conv1`` (convs at 0, 3, 6, BNs at 1, 4) whose last BN is ``bn1``; ours is ``stem.conv1..3`` / ``stem.bn1..3``. Its
stages are ``layer1..4`` of blocks ``0..n-1`` with the projection in ``layer{i}.0.downsample`` (0 conv, 1 BN; with
``avg_down`` 0 is the pool, 1 the conv, 2 the BN), and the classifier is ``fc``. Ours: stage ``i - 1``,
``blocks.j``, the convs (and the block's attention ``se``) under ``token_mixer`` and the first block's projection
under ``shortcut`` (conv, norm).
"""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.timm import register_converter

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")
_SHORTCUT = {"downsample.0.": "shortcut.conv.", "downsample.1.": "shortcut.norm."}
_AVG_SHORTCUT = {"downsample.1.": "shortcut.conv.", "downsample.2.": "shortcut.norm."}  # 0 is the (weightless) pool
_DEEP_STEM = re.compile(r"^conv1\.(\d+)\.(.*)$")  # Sequential(conv, bn, act) x 3, the last BN outside as bn1


def resnet_key(key: str, *, deep_stem: int = 0, avg_down: bool = False) -> str:
    """One timm ResNet key -> ours (``layer2.0.downsample.1.weight`` -> ``stages.1.blocks.0.shortcut.norm.weight``).

    ``deep_stem``: the number of convs of a deep stem (0: the one-conv stem); ``avg_down``: the avg-down shortcut.
    """
    if deep_stem:
        match = _DEEP_STEM.match(key)
        if match is not None:  # conv1.{3i} is conv i+1, conv1.{3i+1} its BN
            index, rest = divmod(int(match[1]), 3)
            return f"stem.{('conv', 'bn')[rest]}{index + 1}.{match[2]}"
        if key.startswith("bn1."):
            return f"stem.bn{deep_stem}.{key[len('bn1.'):]}"
    if key.startswith(("conv1.", "bn1.")):
        return f"stem.{key}"
    if key.startswith("fc."):
        return f"head.{key}"
    match = _BLOCK.match(key)
    if match is None:
        return key
    stage, block, rest = int(match[1]) - 1, int(match[2]), match[3]
    for theirs, ours in (_AVG_SHORTCUT if avg_down else _SHORTCUT).items():
        if rest.startswith(theirs):
            return f"stages.{stage}.blocks.{block}.{ours}{rest[len(theirs):]}"
    return f"stages.{stage}.blocks.{block}.token_mixer.{rest}"


@register_converter("resnet")
@register_converter("ecaresnet")
def convert_resnet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The stem's depth and the shortcut's layout read off the keys (a deep stem's ``conv1.0``, avg-down's ``downsample.2``)."""
    deep_stem = len({k for k in state_dict if _DEEP_STEM.match(k) and k.endswith(".weight") and
                     state_dict[k].ndim == 4})
    avg_down = any(".downsample.2." in key for key in state_dict)
    return {resnet_key(key, deep_stem=deep_stem, avg_down=avg_down): value for key, value in state_dict.items()}
