"""Official PartialNet checkpoints (github.com/haiduo/PartialNet, ``models/partialnet.py``) -> metablocks keys.

    load_partialnet(metablocks.create_model("partialnet_t0"), torch.load("partialnet_t0.pth")["state_dict"])

The official ``stages`` alternate blocks and merging layers (``stages.0`` blocks, ``stages.1`` merging, ``stages.2``
blocks, ...); the PATConv parts map onto our composites' ``parts`` by position:

    spatial_mixing.partial_conv3      token_mixer.parts.0                     (the 3x3 conv on dim / 4)
    PAT_ch: spatial_mixing.attn (SRM) token_mixer.parts.1.parts.0  (cfc1 -> cfc), .norm (BN)  token_mixer.parts.1.parts.1
    PAT_sf: spatial_mixing.norm (LN)  token_mixer.parts.1.parts.0, .attn (RPEAttention)       token_mixer.parts.1.parts.1
    mlp.0 / mlp.1 / mlp.3             channel_mixer fc1 / norm / fc2          (with PAT_sp: channel_mixer.parts.0.*)
    PAT_sp: mlp.4 conv_attn, norm     channel_mixer.parts.1.parts.0.parts.0.conv, .parts.0.parts.1
            mlp.4 norm2, conv         channel_mixer.parts.1.parts.1.parts.0, .parts.1.parts.1
    avgpool_pre_head.1 / head         head.conv / head.fc
"""
from __future__ import annotations

import re

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict

# keys inside a block, for the three PATConv forms (mlp is renamed channel_mixer first)
PAT_CH = [(r"spatial_mixing\.attn\.cfc1\.", "token_mixer.parts.1.parts.0.cfc."),
          (r"spatial_mixing\.attn\.bn\.", "token_mixer.parts.1.parts.0.bn."),
          (r"spatial_mixing\.norm\.", "token_mixer.parts.1.parts.1.")]
PAT_SF = [(r"spatial_mixing\.norm\.", "token_mixer.parts.1.parts.0."),
          (r"spatial_mixing\.attn\.rpe_k\.lookup_table_bias$", "token_mixer.parts.1.parts.1.rpe_table"),
          (r"spatial_mixing\.attn\.", "token_mixer.parts.1.parts.1.")]
PCONV = [(r"spatial_mixing\.partial_conv3\.", "token_mixer.parts.0.")]
MLP = [(r"channel_mixer\.0\.", "channel_mixer.fc1."), (r"channel_mixer\.1\.", "channel_mixer.norm."),
       (r"channel_mixer\.3\.", "channel_mixer.fc2.")]
PAT_SP_MLP = [(r"channel_mixer\.0\.", "channel_mixer.parts.0.fc1."), (r"channel_mixer\.1\.", "channel_mixer.parts.0.norm."),
              (r"channel_mixer\.3\.", "channel_mixer.parts.0.fc2."),
              (r"channel_mixer\.4\.conv_attn\.", "channel_mixer.parts.1.parts.0.parts.0.conv."),
              (r"channel_mixer\.4\.norm\.", "channel_mixer.parts.1.parts.0.parts.1."),
              (r"channel_mixer\.4\.norm2\.", "channel_mixer.parts.1.parts.1.parts.0."),
              (r"channel_mixer\.4\.conv\.", "channel_mixer.parts.1.parts.1.parts.1.")]
OUTSIDE = [(r"^patch_embed\.proj\.", "stem.conv."), (r"^patch_embed\.norm\.", "stem.norm."),
           (r"^head\.", "head.fc."), (r"^avgpool_pre_head\.1\.", "head.conv.")]
BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$")
MERGE = re.compile(r"^stages\.(\d+)\.(reduction|norm)\.(.*)$")


@official("partialnet", source="haiduo/PartialNet models/partialnet.py")
def convert_partialnet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official PartialNet keys -> ours (a whole classification model's; a DDP ``module.`` prefix is dropped)."""
    state_dict = {re.sub(r"^module\.", "", k).replace(".mlp.", ".channel_mixer."): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if block := BLOCK.match(key):
            index, j, rest = int(block[1]), block[2], block[3]
            prefix = f"stages.{index}.blocks.{j}."
            attention = f"{prefix}spatial_mixing.attn.qkv.weight" in state_dict  # PAT_sf, else PAT_ch
            spatial = f"{prefix}channel_mixer.4.conv.weight" in state_dict  # PAT_sp in the MLP
            renames = PCONV + (PAT_SF if attention else PAT_CH) + (PAT_SP_MLP if spatial else MLP)
            rest = rename({rest: value}, [(f"^{p}", r) for p, r in renames])
            key = f"stages.{index // 2}.blocks.{j}.{next(iter(rest))}"
        elif merge := MERGE.match(key):  # stages.(2i+1) merges into stage i+1
            key = f"stages.{(int(merge[1]) + 1) // 2}.downsample.{'conv' if merge[2] == 'reduction' else 'norm'}.{merge[3]}"
        else:
            key = next(iter(rename({key: value}, OUTSIDE)))
        out[key] = value
    return out


def load_partialnet(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official PartialNet state_dict strictly; returns the model."""
    _load_strict(model, convert_partialnet(state_dict), source="the official PartialNet weights", theirs="official")
    return model
