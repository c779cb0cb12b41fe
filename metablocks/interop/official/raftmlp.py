"""Official RaftMLP weights (okojoalg/raft-mlp ``libs/models.py`` + ``libs/modules.py``, the ImageNet configs:
``token_mixing_type: ser_pm``, ``embedding_type: emb_cross_mlp``, ``shortcut: False``) -> metablocks keys.

The official model is ``levels.i.fn``, a Sequential: ``0`` the CrossScaleMLPEmbedding (``fc``), ``1`` an Identity,
``2 .. depth + 1`` one block each (a Sequential: ``0`` RaftShrink, ``1`` the vertical PermutedBlock, ``2`` a
Rearrange, ``3`` the horizontal PermutedBlock, ``4`` RaftExpansion, ``5`` the ChannelBlock), then ToPixel;
``heads.0`` (Rearrange, LayerNorm, ...) and ``classifier``. A PermutedBlock is ``norm.1`` (its LayerNorm, between two
Rearranges) and ``fn.0`` / ``fn.3`` (the MLP). Official block j is our blocks 2j (vertical, no channel mixer) and
2j + 1 (horizontal + the channel MLP).

One tensor transformation: the PermutedBlocks' LayerNorms run on the channels reordered as (channel-in-raft outer,
raft index inner), so official norm weight i belongs to channel (i % r) * (C / r) + i // r; their weights and biases
are permuted (``w.reshape(C // r, r).T.flatten()``, :func:`raft_norm_to_ours`). Everything else is as it is.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official


def raft_norm_to_ours(weight: Tensor, raft_size: int) -> Tensor:
    """An official PermutedBlock LayerNorm parameter (index co * r + k) -> ours (channel k * (C / r) + co)."""
    channels = weight.shape[0]
    if channels % raft_size:
        raise ValueError(f"a raft LayerNorm over {channels} channels does not split into rafts of {raft_size}")
    return weight.reshape(channels // raft_size, raft_size).T.flatten()


def _level(match: re.Match) -> str:
    """``levels.i.fn.n.`` -> our stem / downsample (n = 0) or ``blocks.2j`` / ``blocks.2j+1`` (n = 2 + j)."""
    stage, index, part = int(match.group(1)), int(match.group(2)), match.group(3)
    if index == 0:
        return "stem." if stage == 0 else f"stages.{stage}.downsample."
    j = index - 2
    return {"1": f"stages.{stage}.blocks.{2 * j}.R1.", "3": f"stages.{stage}.blocks.{2 * j + 1}.R3.",
            "5": f"stages.{stage}.blocks.{2 * j + 1}.R5."}.get(part, match.group(0))


RENAMES: list[tuple[str, str]] = [
    (r"\.R1\.norm\.1\.", ".norm1."),  # vertical raft MLP: LayerNorm (permuted below), fn.0 / fn.3 Linears
    (r"\.R1\.fn\.0\.", ".token_mixer.vertical.fc1."),
    (r"\.R1\.fn\.3\.", ".token_mixer.vertical.fc2."),
    (r"\.R3\.norm\.1\.", ".norm1."),  # horizontal raft MLP
    (r"\.R3\.fn\.0\.", ".token_mixer.horizontal.fc1."),
    (r"\.R3\.fn\.3\.", ".token_mixer.horizontal.fc2."),
    (r"\.R5\.norm\.", ".norm2."),  # ChannelBlock: LayerNorm(C) + MLP
    (r"\.R5\.fn\.0\.", ".channel_mixer.fc1."),
    (r"\.R5\.fn\.3\.", ".channel_mixer.fc2."),
    (r"^heads\.0\.1\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]


@official("raftmlp", source="okojoalg/raft-mlp libs/models.py, libs/modules.py")
def convert_raftmlp(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official RaftMLP keys -> ours; the raft LayerNorms' weights and biases permuted to our channel order."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^levels\.(\d)\.fn\.(\d+)\.(?:(\d)\.)?", _level, key)
        if re.search(r"\.R[13]\.norm\.1\.(weight|bias)$", key):
            stage = int(key.split(".")[1])
            value = raft_norm_to_ours(value, _raft_size(model, stage))
        out[key] = value
    return rename(out, RENAMES)


def _raft_size(model: nn.Module, stage: int) -> int:
    return model.stages[stage].blocks[0].token_mixer.raft_size
