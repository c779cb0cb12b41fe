"""Official CSWin Transformer weights (microsoft/CSWin-Transformer ``models/cswin.py``; checkpoints hold them under
``state_dict_ema`` or ``state_dict``) -> metablocks keys.

The official model is ``stage1_conv_embed`` (conv 7x7 s4, Rearrange, LayerNorm), ``stage1..4`` (ModuleLists of
CSWinBlocks), ``merge1..3`` (conv 3x3 s2, LayerNorm) before stages 2-4, ``norm`` and ``head``. A block's ``qkv`` and
``proj`` sit on the block, its two stripe branches (one in the last stage) are ``attns.i`` holding only the LePE
depthwise conv ``get_v``; our cswin_attention holds all of them. No tensor changes.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official


def _stage(match: re.Match) -> str:
    return f"stages.{int(match.group(1)) - 1}.blocks.{match.group(2)}."


RENAMES: list[tuple[str, str]] = [
    (r"^stage1_conv_embed\.0\.", "stem.conv."),  # index 1 is the Rearrange
    (r"^stage1_conv_embed\.2\.", "stem.norm."),
    (r"^merge(\d)\.", r"stages.\1.downsample."),  # merge i sits before stage i + 1 (0-based: i)
    (r"\.qkv\.", ".token_mixer.qkv."),
    (r"\.proj\.", ".token_mixer.proj."),
    (r"\.attns\.(\d)\.get_v\.", r".token_mixer.get_v.\1."),  # branch 0: vertical stripes, 1: horizontal
    (r"\.mlp\.", ".channel_mixer."),
    (r"^head\.", "head.fc."),
    (r"^norm\.", "head.norm."),  # per-token LayerNorm before the mean
]


@official("cswin", source="microsoft/CSWin-Transformer models/cswin.py")
def convert_cswin(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official CSWin keys -> ours (tensors unchanged: every layer has the official shape)."""
    out = {re.sub(r"^stage(\d)\.(\d+)\.", _stage, key): value for key, value in state_dict.items()}
    return rename(out, RENAMES)
