"""timm MLP-Mixer (``mixer_*``) -> metablocks keys.

timm's Mixer is flat (``blocks.i``, one stage for us), calls its stem conv ``stem.proj``, its MLPs
``mlp_tokens`` / ``mlp_channels``, puts the final LayerNorm at ``norm`` (our head's norm, applied to the map
before pooling) and the classifier at ``head``.
"""
from __future__ import annotations

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.timm import register_converter

MIXER_RENAMES: list[tuple[str, str]] = [
    (r"^stem\.proj\.", "stem.conv."),
    (r"^blocks\.", "stages.0.blocks."),
    (r"\.mlp_tokens\.", ".token_mixer."),
    (r"\.mlp_channels\.", ".channel_mixer."),
    (r"^norm\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]


@register_converter("mixer_")
def convert_mixer(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return rename(state_dict, MIXER_RENAMES)
