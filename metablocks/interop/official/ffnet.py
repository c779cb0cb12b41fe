"""Official FFNet weights (ysj9909/FFNet ``models/ffnet.py``; its checkpoints hold them under ``state_dict``) ->
metablocks keys.

    model = metablocks.create_model("ffnet_1")
    load_ffnet(model, torch.load("ffnet_1.pth.tar")["state_dict"])

The official model is ``patch_embed`` (Sequential: conv-BN, GELU, conv-BN), ``stages.i`` (Sequential: a PatchMerging
first in every stage but the first, then FFBlocks), ``norm`` and ``head``. An FFBlock is ``token_mixer`` (Sequential:
ResidualBlock(main=Token_Mixer, layer_scale), SqueezeExcite or Identity) and ``channel_mixer``
(ResidualBlock(main=Channel_Mixer)). Its conv-BNs name the conv ``c``; a token mixer's 3x3 depthwise op is a bare
conv; FFNet-1's channel mixer conv is a bare conv-BN where the others have a RepVGGDW (``conv``, ``conv1``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict


def _block_index(match: re.Match) -> str:
    """``stages.i.j.`` -> ``stages.i.blocks.j'.``; every stage but the first starts with its downsample."""
    stage, index = int(match.group(1)), int(match.group(2))
    if stage > 0 and index == 0:
        return f"stages.{stage}.downsample."
    return f"stages.{stage}.blocks.{index - (stage > 0)}."


_RENAMES = [
    (r"^patch_embed\.0\.", "stem.layers.0."),
    (r"^patch_embed\.2\.", "stem.layers.1."),
    (r"^(stem\.layers\.\d)\.bn\.", r"\1.norm."),
    (r"^head\.", "head.fc."),
    (r"^norm\.", "head.norm."),
    (r"\.downsample\.proj\.0\.", ".downsample.dw."),  # RepVGGDW(C_in, C_out, 7, stride 2)
    (r"\.downsample\.proj\.1\.conv\.bn\.", ".downsample.bn."),  # Conv2d_BN_skip: BN -> 1x1 conv, + x
    (r"\.downsample\.proj\.1\.conv\.c\.", ".downsample.pw."),
    (r"\.token_mixer\.0\.layer_scale$", ".layer_scale1.scale"),
    (r"\.channel_mixer\.layer_scale$", ".layer_scale2.scale"),
    (r"\.token_mixer\.0\.main\.", ".token_mixer."),
    (r"\.token_mixer\.1\.fc1\.", ".se.down."),  # the squeeze-excite step (use_ses): timm's SqueezeExcite
    (r"\.token_mixer\.1\.fc2\.", ".se.up."),
    (r"\.channel_mixer\.main\.conv\.(c|bn)\.", r".channel_mixer.conv.conv.\1."),  # a bare conv-BN: repvgg_dw without small
    (r"\.channel_mixer\.main\.", ".channel_mixer."),
    (r"(\.token_mixer\.conv[12])\.(weight|bias)$", r"\1.conv.\2"),  # a bare depthwise conv: dwconv
    (r"\.c\.weight$", ".conv.weight"),  # every Conv2d_BN
]


@official("ffnet", source="ysj9909/FFNet models/ffnet.py")
def convert_ffnet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official FFNet keys -> ours; layer scales (C, 1, 1) -> (C,), every other tensor as it is."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", _block_index, key)
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value.reshape(-1) if key.endswith(("layer_scale1.scale", "layer_scale2.scale")) else value
    return out


def load_ffnet(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official FFNet state_dict into ``model`` strictly; returns the model."""
    _load_strict(model, convert_ffnet(state_dict), source="the official FFNet weights", theirs="official")
    return model
