"""Official TransNeXt weights (DaiShiResearch/TransNeXt ``classification/transnext.py``; the released checkpoints
are plain state_dicts) -> metablocks keys. The official model is ``patch_embed{i}`` (conv + LayerNorm), ``block{i}``,
``norm{i}`` per stage; ours puts stage i's final norm ``norm{i}`` before stage i+1's patch-embedding conv (the
``conv`` downsample's ``norm``, its own LayerNorm is ``post_norm``) and ``norm4`` in the head. Inside a block only
``attn`` -> ``token_mixer``, ``mlp`` -> ``channel_mixer`` change (the mixers keep the official parameter names; the
official ``DWConv`` wrapper's ``dwconv.dwconv`` is our ``dwconv``).

The official position-bias index/coordinate tables, padding masks and length scales are non-persistent buffers
there as here: they are in no state_dict, so nothing is dropped.

    model = convert_official("transnext_tiny_224_1k.pth", "transnext_tiny")
    metablocks convert transnext_tiny_224_1k.pth --recipe transnext_tiny -o transnext_tiny.safetensors
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict

RENAMES: list[tuple[str, str]] = [
    (r"^patch_embed1\.proj\.", "stem.conv."),  # conv 7x7 stride 4, padding 3
    (r"^patch_embed1\.norm\.", "stem.norm."),
    *[(rf"^patch_embed{i}\.proj\.", f"stages.{i - 1}.downsample.conv.") for i in (2, 3, 4)],  # conv 3x3 stride 2
    *[(rf"^patch_embed{i}\.norm\.", f"stages.{i - 1}.downsample.post_norm.") for i in (2, 3, 4)],
    *[(rf"^norm{i}\.", f"stages.{i}.downsample.norm.") for i in (1, 2, 3)],  # stage i's final norm
    (r"^head\.", "head.fc."),  # before norm4's rename, which lands in head. too
    (r"^norm4\.", "head.norm."),  # the last stage's final norm: on the map, before the mean
    *[(rf"^block{i}\.", f"stages.{i - 1}.blocks.") for i in (1, 2, 3, 4)],
    (r"\.attn\.", ".token_mixer."),
    (r"\.mlp\.dwconv\.dwconv\.", ".channel_mixer.dwconv."),
    (r"\.mlp\.", ".channel_mixer."),
]


@official("transnext", source="DaiShiResearch/TransNeXt classification/transnext.py")  # no drops: every key lands
def convert_transnext(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official TransNeXt keys -> ours (tensors unchanged: every layer has the official shape)."""
    return rename(dict(state_dict), RENAMES)


def load_transnext(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official TransNeXt state_dict into ``model`` strictly; returns the model."""
    _load_strict(model, convert_transnext(state_dict), source="the official TransNeXt weights", theirs="official")
    return model
