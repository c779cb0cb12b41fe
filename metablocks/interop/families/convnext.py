"""timm ConvNeXt (``convnext_*``) -> metablocks keys.

timm's stem and downsamplers are ``nn.Sequential`` (``stem.0`` conv, ``stem.1`` norm; ``downsample.0`` norm,
``downsample.1`` conv); the block names its depthwise conv ``conv_dw`` and its layer scale ``gamma``.
"""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.timm import register_converter

# Shared with the other ConvNeXt-shaped families (InceptionNeXt): stem, downsample, the block's norm and scale.
CONVNEXT_LIKE_RENAMES: list[tuple[str, str]] = [
    (r"^stem\.0\.", "stem.conv."),
    (r"^stem\.1\.", "stem.norm."),
    (r"\.downsample\.0\.", ".downsample.norm."),
    (r"\.downsample\.1\.", ".downsample.conv."),
    (r"(\.blocks\.\d+)\.norm\.", r"\1.norm1."),
    (r"(\.blocks\.\d+)\.gamma$", r"\1.layer_scale1.scale"),
]

CONVNEXT_RENAMES: list[tuple[str, str]] = CONVNEXT_LIKE_RENAMES + [
    (r"(\.blocks\.\d+)\.conv_dw\.", r"\1.token_mixer.conv."),
]


def rename(state_dict: dict[str, Tensor], renames: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Apply every (pattern, replacement) to every key, in order."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


@register_converter("convnext")
def convert_convnext(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Head keys (``head.norm``, ``head.fc``) already match ours; 1x1-conv MLP weights are reshaped by the loader."""
    return rename(state_dict, CONVNEXT_RENAMES)
