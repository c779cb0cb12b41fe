"""timm FasterNet (``fasternet_*``) -> metablocks keys.

timm's block calls its partial convolution ``spatial_mixing.partial_conv3`` (our ``token_mixer``, a split whose first
part is the 3x3 conv: ``token_mixer.parts.0``) and its MLP an ``nn.Sequential`` (``mlp.0`` conv, ``mlp.1`` norm,
``mlp.3`` conv; the shared renames have already made ``mlp`` our ``channel_mixer``); the merging conv is
``reduction``; the head's ``conv_head`` and ``classifier`` are our head's ``conv`` and ``fc``.
"""
from __future__ import annotations

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.timm import register_converter

FASTERNET_RENAMES: list[tuple[str, str]] = [
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"^patch_embed\.norm\.", "stem.norm."),
    (r"\.downsample\.reduction\.", ".downsample.conv."),
    (r"\.spatial_mixing\.partial_conv3\.", ".token_mixer.parts.0."),
    (r"\.channel_mixer\.0\.", ".channel_mixer.fc1."),
    (r"\.channel_mixer\.1\.", ".channel_mixer.norm."),
    (r"\.channel_mixer\.3\.", ".channel_mixer.fc2."),
    (r"(\.blocks\.\d+)\.layer_scale$", r"\1.layer_scale1.scale"),  # with layer_scale_init_value > 0 (no timm size)
    (r"^conv_head\.", "head.conv."),
    (r"^classifier\.", "head.fc."),
]


@register_converter("fasternet")
def convert_fasternet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return rename(state_dict, FASTERNET_RENAMES)
