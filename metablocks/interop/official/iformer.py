"""Official Inception Transformer weights (sail-sg/iFormer ``models/inception_transformer.py``) -> metablocks keys:
``patch_embed`` is our conv_stack stem, ``patch_embedN`` / ``blocksN`` / ``pos_embedN`` stage N-1's downsample, blocks
and position embedding, a block's ``attn`` our ``token_mixer`` (the inception mixer), ``mlp`` our channel mixer,
``norm`` + ``head`` our head.

    metablocks convert iformer_small.pth --recipe iformer_small -o iformer_small.safetensors
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official

RENAMES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^patch_embed\.proj(\d)\.", lambda m: f"stem.layers.{int(m[1]) - 1}.conv."),  # FirstPatchEmbed: conv-BN-GELU-conv-BN
    (r"^patch_embed\.norm(\d)\.", lambda m: f"stem.layers.{int(m[1]) - 1}.norm."),
    (r"^patch_embed(\d)\.proj\.", lambda m: f"stages.{int(m[1]) - 1}.downsample.conv."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"stages.{int(m[1]) - 1}.downsample.norm."),
    (r"^blocks(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks."),
    (r"\.attn\.high_mixer\.conv1\.", ".token_mixer.conv1."),  # 1x1 of the conv branch
    (r"\.attn\.high_mixer\.proj1\.", ".token_mixer.conv_dw."),  # its depthwise 3x3
    (r"\.attn\.high_mixer\.proj2\.", ".token_mixer.pool_proj."),  # 1x1 after the max-pool
    (r"\.attn\.low_mixer\.qkv\.", ".token_mixer.qkv."),
    (r"\.attn\.conv_fuse\.", ".token_mixer.fuse."),
    (r"\.attn\.proj\.", ".token_mixer.proj."),
    (r"\.mlp\.", ".channel_mixer."),
    (r"\.layer_scale_(\d)$", r".layer_scale\1.scale"),
    (r"^norm\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]


@official("iformer", source="sail-sg/iFormer models/inception_transformer.py")
def convert_iformer(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official iFormer keys -> ours; ``pos_embedN`` (1, H, W, C) becomes stage N-1's (1, H*W, C) table (the same
    row-major positions)."""
    out: dict[str, Tensor] = {}
    for key, value in rename(dict(state_dict), RENAMES).items():
        match = re.fullmatch(r"pos_embed(\d)", key)
        if match:
            key, value = f"stages.{int(match[1]) - 1}.pos_embed.weight", value.flatten(1, 2)
        out[key] = value
    return out
