"""timm PiT (``pit_*``) -> metablocks keys.

timm keeps PiT's stages as ``transformers.i`` (blocks ``transformers.i.blocks.j``; the pooling layer before stage
i > 0 as ``transformers.i.pool.{conv,fc}``: our stage's ``downsample``), its patch embedding as ``patch_embed.conv``,
its position embedding as a (1, C, H, W) map and its class (and distillation) tokens as one (1, P, C) parameter
``cls_token``; the final LayerNorm ``norm`` and the classifiers ``head`` / ``head_dist`` are our token head's.
"""
from __future__ import annotations

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.families.vit import token_classifiers
from metablocks.interop.timm import register_converter

PIT_RENAMES: list[tuple[str, str]] = [
    (r"^patch_embed\.conv\.", "stem.conv."),
    (r"^transformers\.(\d+)\.pool\.", r"stages.\1.downsample."),
    (r"^transformers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.attn\.", ".token_mixer."),
    (r"^norm\.", "head.norm."),
]


def convert_pit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    out = rename(state_dict, PIT_RENAMES)
    if "pos_embed" in out:  # (1, C, H, W) -> (1, H*W, C), the map's tokens in raster order
        out["stages.0.pos_embed.weight"] = out.pop("pos_embed").flatten(2).transpose(1, 2)
    if "cls_token" in out:  # (1, P, C): the class token, then the distillation token
        tokens = out.pop("cls_token")
        out["stages.0.prefix_tokens.cls"] = tokens[:, :1]
        if tokens.shape[1] == 2:
            out["stages.0.prefix_tokens.dist"] = tokens[:, 1:]
    return token_classifiers(out)


register_converter("pit_")(convert_pit)
