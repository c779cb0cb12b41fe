"""Official CrossFormer weights (cheerss/CrossFormer ``models/crossformer.py``; checkpoints hold them under ``model``)
-> metablocks keys: the stem is ``patch_embed``, a stage ``layers.i`` whose merging layer ``downsample`` ends it (ours
begins the next stage: ``layers.i.downsample`` is our ``stages.{i+1}.downsample``), a block's LSDA ``attn`` with its
dynamic position bias ``attn.pos``, the MLP ``mlp``, the final LayerNorm ``norm``.

    model = metablocks.create_model("crossformer_small")
    load_crossformer(model, torch.load("crossformer-s.pth", map_location="cpu")["model"])
    metablocks convert crossformer-s.pth --recipe crossformer_small -o crossformer_small.safetensors

Dropped on purpose: each attention's ``biases`` (the (2G-1)^2 offsets) and ``relative_position_index``, which the
released code registers as persistent buffers; ours are rebuilt from the group size (non-persistent), equal values.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from metablocks.interop.official import convert_official, official

DROPS: tuple[str, ...] = (
    r"\.attn\.biases$",  # the DPB's input offsets: a buffer of the released code, rebuilt from G here
    r"\.attn\.relative_position_index$",  # the (G^2, G^2) offset index: a buffer there, rebuilt from G here
)

RENAMES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^patch_embed\.", "stem."),  # projs.0..3 (kernels 4, 8, 16, 32) and norm, as ours
    (r"^layers\.(\d+)\.downsample\.reductions\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.projs."),
    (r"^layers\.(\d+)\.downsample\.norm\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.attn\.", ".token_mixer."),  # qkv, proj, pos (pos_proj, pos1..3) as ours
    (r"\.mlp\.", ".channel_mixer."),  # fc1, fc2
    (r"^head\.", "head.fc."),  # before the final norm's rename, which lands in head. too
    (r"^norm\.", "head.norm."),  # LayerNorm of the map, before the average pool
]


@official("crossformer", source="cheerss/CrossFormer models/crossformer.py (as released for CrossFormer, f20000d)",
          drops=DROPS)
def convert_crossformer(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official CrossFormer keys -> ours (tensors unchanged: every layer has the official shape). The ``DROPS``
    buffers are taken out by the framework before this is called (``convert_official``)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def load_crossformer(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official CrossFormer state_dict into ``model`` strictly (the index buffers dropped and reported in
    ``model.official_dropped``); returns the model, in eval mode."""
    return convert_official(state_dict, model, family="crossformer")
