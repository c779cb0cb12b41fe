"""timm InceptionNeXt (``inception_next_*``) -> metablocks keys.

Stem, downsample, block norm and layer scale are named as in timm's ConvNeXt; the token mixer's
``dwconv_hw/w/h`` already match ours; the MLP head's ``fc2`` is our classifier ``fc``.
"""
from __future__ import annotations

from torch import Tensor

from metablocks.interop.families.convnext import CONVNEXT_LIKE_RENAMES, rename
from metablocks.interop.timm import register_converter

INCEPTIONNEXT_RENAMES: list[tuple[str, str]] = CONVNEXT_LIKE_RENAMES + [
    (r"^head\.fc2\.", "head.fc."),
]


@register_converter("inception_next")
def convert_inceptionnext(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return rename(state_dict, INCEPTIONNEXT_RENAMES)
