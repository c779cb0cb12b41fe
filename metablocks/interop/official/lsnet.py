"""Official LSNet weights (THU-MIG/lsnet ``model/lsnet.py``; its checkpoints hold them under ``model``) -> metablocks
keys.

    model = metablocks.create_model("lsnet_t")
    load_lsnet(model, torch.load("lsnet_t.pth")["model"])

The official model is ``patch_embed`` (Sequential: three conv-BNs with ReLUs between), ``blocks1..4`` (Sequential:
from the second on, the downsample's two conv-BNs first, then the blocks) and ``head`` (``bn`` -> ``l``; with
distillation also ``head_dist``). A block is ``mixer`` (RepVGGDW, LSConv, or Residual(Attention) as ``mixer.m``),
``se`` (SqueezeExcite or Identity) and ``ffn`` (Residual(FFN) as ``ffn.m``). Its conv-BNs name the conv ``c``; the
attention's output projection is ``proj.1`` after a ReLU; ``attention_bias_idxs`` is rebuilt from the map size.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict


def _stage_index(match: re.Match) -> str:
    """``blocksN.j.`` -> stage N - 1; every stage but the first starts with its downsample's dw and pw conv-BNs."""
    stage, index = int(match.group(1)) - 1, int(match.group(2))
    if stage > 0 and index < 2:
        return f"stages.{stage}.downsample.{('dw', 'pw')[index]}."
    return f"stages.{stage}.blocks.{index - 2 * (stage > 0)}."


_RENAMES = [
    (r"^patch_embed\.(\d)\.", lambda m: f"stem.layers.{int(m.group(1)) // 2}."),
    (r"^(stem\.layers\.\d)\.bn\.", r"\1.norm."),
    (r"^head\.bn\.", "head.norm.inner."),  # a BatchNorm on the pooled vector
    (r"^head\.l\.", "head.fc."),
    (r"\.mixer\.m\.", ".token_mixer."),  # Residual(Attention)
    (r"\.mixer\.", ".token_mixer."),
    (r"(\.token_mixer)\.proj\.1\.", r"\1.proj."),
    (r"\.se\.fc1\.", ".se.down."),
    (r"\.se\.fc2\.", ".se.up."),
    (r"\.ffn\.m\.", ".channel_mixer."),
    (r"\.c\.weight$", ".conv.weight"),  # every Conv2d_BN
]
_DISTILLED = [(r"^head\.fc\.", "head.fc.cls.linear."), (r"^head\.norm\.inner\.", "head.fc.cls.norm.inner."),
              (r"^head_dist\.bn\.", "head.fc.dist.norm.inner."), (r"^head_dist\.l\.", "head.fc.dist.linear.")]


@official("lsnet", source="THU-MIG/lsnet model/lsnet.py")
def convert_lsnet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official LSNet keys -> ours (tensors unchanged); ``attention_bias_idxs`` left out (ours is rebuilt, not saved)."""
    distilled = any(key.startswith("head_dist.") for key in state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attention_bias_idxs"):
            continue
        key = re.sub(r"^blocks(\d)\.(\d+)\.", _stage_index, key)
        for pattern, replacement in _RENAMES + (_DISTILLED if distilled else []):
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def load_lsnet(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official LSNet state_dict into ``model`` strictly; returns the model."""
    _load_strict(model, convert_lsnet(state_dict), source="the official LSNet weights", theirs="official")
    return model
