"""timm GhostNetV2 (``ghostnetv2_*``; the official checkpoints have the same keys) -> metablocks keys.

timm's ``blocks.i`` are our stages; each bottleneck ``blocks.i.j`` is a block's ``token_mixer`` except its shortcut
(``shortcut.0..3``: our ``dw_project`` shortcut's conv_dw, bn_dw, conv, bn). Inside the ghost modules the Sequentials
get names: ``primary_conv.0/1`` -> ``primary.conv/norm``, ``cheap_operation.0/1`` -> ``cheap.conv/norm``, and the DFC
gate ``short_conv.0..5`` -> ``dfc.conv, norm, conv_w (1x5), norm_w, conv_h (5x1), norm_h``; the SE's
``conv_reduce/conv_expand`` are ``down/up``. The last ``blocks.9.0`` (ConvBnAct 1x1 to 960) is the stage of no blocks'
downsample; ``conv_stem``/``bn1`` the stem, ``conv_head``/``classifier`` the head.
"""
from __future__ import annotations

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.timm import register_converter

_SHORTCUT = ("conv_dw", "bn_dw", "conv", "bn")
_DFC = ("conv", "norm", "conv_w", "norm_w", "conv_h", "norm_h")

GHOSTNET_RENAMES: list[tuple[str, str]] = [
    (r"^conv_stem\.", "stem.layers.0.conv."),
    (r"^bn1\.", "stem.layers.0.norm."),
    (r"^blocks\.(\d+)\.0\.conv\.", r"stages.\1.downsample.layers.0.conv."),  # the ConvBnAct (bottlenecks have conv_dw)
    (r"^blocks\.(\d+)\.0\.bn1\.", r"stages.\1.downsample.layers.0.norm."),
    *[(rf"^blocks\.(\d+)\.(\d+)\.shortcut\.{i}\.", rf"stages.\1.blocks.\2.shortcut.{name}.") for i, name in enumerate(_SHORTCUT)],
    (r"^blocks\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.token_mixer."),
    (r"\.primary_conv\.0\.", ".primary.conv."),
    (r"\.primary_conv\.1\.", ".primary.norm."),
    (r"\.cheap_operation\.0\.", ".cheap.conv."),
    (r"\.cheap_operation\.1\.", ".cheap.norm."),
    *[(rf"\.short_conv\.{i}\.", f".dfc.{name}.") for i, name in enumerate(_DFC)],
    (r"\.se\.conv_reduce\.", ".se.down."),
    (r"\.se\.conv_expand\.", ".se.up."),
    (r"^conv_head\.", "head.conv."),
    (r"^classifier\.", "head.fc."),
]


@register_converter("ghostnetv2")
def convert_ghostnet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return rename(state_dict, GHOSTNET_RENAMES)
