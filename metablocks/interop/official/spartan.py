"""Official SpaRTAN weights (henry-pay/SpaRTAN ``src/model/spartan.py``; its checkpoints hold them under ``model``) ->
metablocks keys.

    metablocks convert SpaRTAN_latest.pth --recipe spartan_t -o spartan_t.safetensors

The official model is ``conv`` (the stem: two ConvNormAct), ``layers`` (one flat Sequential: each stage's Blocks, then
a ConvNormAct downsample after every stage but the last) and ``linear``. A Block holds ``norm_1``/``norm_2``
(GroupNorm(1) weights), ``scale_1``/``scale_2`` (1, C, 1, 1), ``smixer`` and ``cmixer``; their SELayers name the two
1x1 convs ``squeeze``/``expand``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official

RENAMES = [
    (r"^conv\.(\d)\.", r"stem.layers.\1."),
    (r"^linear\.", "head.fc."),
    (r"\.norm_(\d)\.", r".norm\1."),
    (r"\.scale_(\d)$", r".layer_scale\1.scale"),
    (r"\.smixer\.", ".token_mixer."),
    (r"\.cmixer\.", ".channel_mixer."),
    (r"\.(h_|l_)?attn\.squeeze\.", r".\1se.down."),
    (r"\.(h_|l_)?attn\.expand\.", r".\1se.up."),
    (r"\.channel_mixer\.complex$", ".channel_mixer.complex_weight"),
]
_FLAT = (".layer_scale1.scale", ".layer_scale2.scale", ".token_mixer.gamma")  # (1, C, 1, 1) officially


def _shaped(key: str, value: Tensor) -> Tensor:
    if key.endswith(".channel_mixer.complex_weight"):  # (1, 1, 1, C/2, 2) officially: broadcast against (B, H, W, ...)
        return value.reshape(-1, 2)
    return value.reshape(-1) if key.endswith(_FLAT) else value


def layer_places(model: nn.Module) -> dict[int, str]:
    """Official ``layers.i`` -> our module prefix: the blocks of each stage in order, with the downsample the official
    code puts after a stage being the next stage's ``downsample``."""
    places, i = {}, 0
    for s, stage in enumerate(model.stages):
        if s > 0 and not isinstance(stage.downsample, nn.Identity):
            places[i], i = f"stages.{s}.downsample.layers.0", i + 1
        for j in range(len(stage.blocks)):
            places[i], i = f"stages.{s}.blocks.{j}", i + 1
    return places


@official("spartan", source="henry-pay/SpaRTAN src/model/spartan.py")
def convert_spartan(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official SpaRTAN keys -> ours: ``layers.i`` placed by the model's stage depths; the layer scales and smixer's
    gamma (1, C, 1, 1) -> (C,), cmixer's complex weight (1, 1, 1, C/2, 2) -> (C/2, 2); every other tensor as it is."""
    places = layer_places(model)

    def place(match: re.Match) -> str:
        index = int(match.group(1))
        return places.get(index, f"layers.{index}") + "."  # an index the model has no place for stays (reported)

    renamed = rename({re.sub(r"^layers\.(\d+)\.", place, k): v for k, v in state_dict.items()}, RENAMES)
    return {k: _shaped(k, v) for k, v in renamed.items()}
