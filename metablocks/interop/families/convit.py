"""timm ConViT (``convit_*``) -> metablocks keys.

timm's ConViT is flat: ``blocks.0-9`` (GPSA, before the class token: our stage 0) and ``blocks.10-11`` (self-attention
with it: our stage 1, which puts the token in); its ``cls_token`` is stage 1's prefix token, its ``pos_embed`` (the
patches' only) stage 0's position embedding, ``norm``/``head`` our token head's norm and classifier.
"""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.timm import register_converter

LOCAL_UP_TO_LAYER = 10  # timm's convit_* (and the paper's): the class token goes in before block 10

CONVIT_RENAMES: list[tuple[str, str]] = [
    (r"^cls_token$", "stages.1.prefix_tokens.cls"),
    (r"^pos_embed$", "stages.0.pos_embed.weight"),
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"\.attn\.", ".token_mixer."),
    (r"^norm\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]


def _block(match: re.Match) -> str:
    index = int(match[1])
    stage, j = (0, index) if index < LOCAL_UP_TO_LAYER else (1, index - LOCAL_UP_TO_LAYER)
    return f"stages.{stage}.blocks.{j}."


@register_converter("convit_")
def convert_convit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return rename({re.sub(r"^blocks\.(\d+)\.", _block, k): v for k, v in state_dict.items()}, CONVIT_RENAMES)
