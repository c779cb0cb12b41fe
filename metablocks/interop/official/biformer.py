"""Official BiFormer weights (rayleizhu/BiFormer ``models/biformer.py``; checkpoints hold them under ``model``) ->
metablocks keys: the stem and the downsamplers are ``downsample_layers`` there, a block's CPE is ``pos_embed``,
BRA's projections are ``attn.qkv.qkv`` / ``attn.wo``, the MLP a Sequential, the final BatchNorm ``norm``.

    model = metablocks.create_model("biformer_tiny")
    load_biformer(model, torch.load("biformer_tiny_in1k.pth")["model"])
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict

RENAMES: list[tuple[str, str]] = [
    (r"^downsample_layers\.0\.0\.", "stem.layers.0.conv."),  # stem: conv 3x3 s2 (C/2), BN, GELU, conv 3x3 s2 (C), BN
    (r"^downsample_layers\.0\.1\.", "stem.layers.0.norm."),
    (r"^downsample_layers\.0\.3\.", "stem.layers.1.conv."),
    (r"^downsample_layers\.0\.4\.", "stem.layers.1.norm."),
    (r"^downsample_layers\.(\d+)\.0\.", r"stages.\1.downsample.conv."),  # conv 3x3 s2, BN
    (r"^downsample_layers\.(\d+)\.1\.", r"stages.\1.downsample.norm."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.pos_embed\.", ".cpe.conv."),  # x = x + dwconv3x3(x)
    (r"\.attn\.qkv\.qkv\.", ".token_mixer.qkv."),  # BRA's QKVLinear
    (r"\.attn\.wo\.", ".token_mixer.proj."),
    (r"\.attn\.", ".token_mixer."),  # AttentionLePE: qkv, proj, lepe as they are
    (r"\.mlp\.0\.", ".channel_mixer.fc1."),
    (r"\.mlp\.3\.", ".channel_mixer.fc2."),
    (r"^head\.", "head.fc."),  # before the final norm's rename, which lands in head. too
    (r"^norm\.", "head.norm."),  # BatchNorm of the map, before the mean
]


@official("biformer", source="rayleizhu/BiFormer models/biformer.py")
def convert_biformer(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official BiFormer keys -> ours (tensors unchanged: every layer has the official shape)."""
    return rename(dict(state_dict), RENAMES)


def load_biformer(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official BiFormer state_dict into ``model`` strictly; returns the model."""
    _load_strict(model, convert_biformer(state_dict), source="the official BiFormer weights", theirs="official")
    return model
