"""timm Swin Transformer (``swin_*``) -> metablocks keys: patch_embed -> stem, layers -> stages, attn -> token_mixer,
the final norm -> head.norm (our head normalizes the map before pooling, ``norm_first``)."""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.timm import register_converter

_RENAMES = [
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"^patch_embed\.norm\.", "stem.norm."),
    (r"^layers\.(\d+)\.", r"stages.\1."),
    (r"\.attn\.", ".token_mixer."),
    (r"^norm\.", "head.norm."),
]
_BUFFERS = ("relative_position_index", "attn_mask")  # rebuilt from the window and the map size, never loaded


@register_converter("swin")
def convert_swin(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state_dict.items():
        if key.endswith(_BUFFERS):
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out
