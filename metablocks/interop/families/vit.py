"""timm ViT / DeiT (``vit_*``, ``deit_*``) -> metablocks keys.

timm's ViT is flat (``blocks.i``: our one stage), keeps its prefix tokens and position embedding on the model
(``cls_token``, ``dist_token``, ``reg_token``, ``pos_embed``: our stage's ``prefix_tokens`` and ``pos_embed``), calls
its patch embedding ``patch_embed.proj``, its final LayerNorm ``norm`` (our token head's norm) and its classifiers
``head`` / ``head_dist`` (our head's ``fc``, or ``fc.cls`` / ``fc.dist`` when it averages two).
"""
from __future__ import annotations

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.timm import register_converter

VIT_RENAMES: list[tuple[str, str]] = [
    (r"^cls_token$", "stages.0.prefix_tokens.cls"),
    (r"^dist_token$", "stages.0.prefix_tokens.dist"),
    (r"^reg_token$", "stages.0.prefix_tokens.registers"),
    (r"^pos_embed$", "stages.0.pos_embed.weight"),
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"^blocks\.", "stages.0.blocks."),
    (r"\.attn\.", ".token_mixer."),
    (r"\.ls(\d)\.gamma$", r".layer_scale\1.scale"),
    (r"^norm\.", "head.norm."),
]


def token_classifiers(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's ``head`` (and ``head_dist``) -> our token head's ``fc`` (``fc.cls`` and ``fc.dist`` when it averages
    the two), in place."""
    two = "head_dist.weight" in out
    for leaf in ("weight", "bias"):
        if f"head.{leaf}" in out:
            out[f"head.fc.cls.{leaf}" if two else f"head.fc.{leaf}"] = out.pop(f"head.{leaf}")
        if two:
            out[f"head.fc.dist.{leaf}"] = out.pop(f"head_dist.{leaf}")
    return out


def convert_vit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return token_classifiers(rename(state_dict, VIT_RENAMES))


register_converter("vit_")(convert_vit)
register_converter("deit_")(convert_vit)
