"""Official GLNet weights (rayleizhu/GLMix ``models/glnet.py``, ``models/glnet_tklb.py``; checkpoints hold them under
``model``, glnet_16g's released ones under ``model_ema``) -> metablocks keys.

    model = convert_official("glnet_4g.pth", "glnet_4g")          # metablocks.interop.official
    model = convert_official("glnet_16g.pth", "glnet_16g", key="model_ema")    # the released 16G weights
    metablocks convert glnet_4g.pth --recipe glnet_4g -o glnet_4g.safetensors

The official model is ``downsample_layers`` (the stem, then the three transitions), ``stages.i.blocks.j``, ``norm``
(the BatchNorm before the mean) and ``head`` (and ``tklb_aux_head`` for token labelling). A GLMixBlock is
``pos_conv`` (the CPE), ``norm1``, ``slot_scale``, ``init_slots`` (learned slots only), ``relation_mha`` (an
nn.MultiheadAttention among the slots: ``in_proj_weight`` is our qkv), ``feature_conv`` (the local 1x1 -> dw -> 1x1
branch), ``norm2``, ``mlp`` (Sequential: 1x1 conv, residual dw3x3 or Identity, GELU, 1x1 conv) and ``ls1``/``ls2``;
our glmix mixer holds the CPE, the first norm and the first layer scale, so the block's ``norm2`` is our ``norm1``.
An MHSA block is ``pos_conv``, ``norm1``, ``mha_op``, ``norm2``, ``mlp``, ``ls1``/``ls2`` (our CPE is branch 1).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict

_STEM_OVERLAPPED = [  # glnet_4g/9g/16g: Identity, 3x3 s2 conv, BN, GELU, 3x3 s2 conv, BN; transitions conv, BN
    (r"^downsample_layers\.0\.1\.", "stem.layers.0.conv."),
    (r"^downsample_layers\.0\.2\.", "stem.layers.0.norm."),
    (r"^downsample_layers\.0\.4\.", "stem.layers.1.conv."),
    (r"^downsample_layers\.0\.5\.", "stem.layers.1.norm."),
    (r"^downsample_layers\.(\d)\.0\.", r"stages.\1.downsample.conv."),
    (r"^downsample_layers\.(\d)\.1\.", r"stages.\1.downsample.norm."),
]
_STEM_PATCHIFY = [  # glnet_stl: 4x4 s4 conv, BN; transitions BN, 2x2 s2 conv (norm.proj)
    (r"^downsample_layers\.0\.0\.", "stem.layers.0.conv."),
    (r"^downsample_layers\.0\.1\.", "stem.layers.0.norm."),
    (r"^downsample_layers\.(\d)\.0\.", r"stages.\1.downsample.norm."),
    (r"^downsample_layers\.(\d)\.1\.", r"stages.\1.downsample.conv."),
]
_MLP = [
    (r"\.mlp\.0\.", ".channel_mixer.fc1."),
    (r"\.mlp\.1\.", ".channel_mixer.dw."),  # the hidden layer's residual dw3x3 (mlp_dw)
    (r"\.mlp\.[23]\.", ".channel_mixer.fc2."),  # 3 after the dw conv (or its Identity), 2 in the Linear MLP
]
_GLMIX = [
    (r"\.pos_conv\.", ".token_mixer.cpe."),
    (r"\.norm1\.", ".token_mixer.norm."),
    (r"\.(slot_scale|init_slots)$", r".token_mixer.\1"),
    (r"\.relation_mha\.in_proj_(weight|bias)$", r".token_mixer.attn.qkv.\1"),
    (r"\.relation_mha\.out_proj\.", ".token_mixer.attn.proj."),
    (r"\.feature_conv\.", ".token_mixer.local."),
    (r"\.norm2\.", ".norm1."),
    (r"\.ls1\.gamma$", ".token_mixer.layer_scale.scale"),
    (r"\.ls2\.gamma$", ".layer_scale2.scale"),
]
_MHSA = [
    (r"\.pos_conv\.", ".cpe.conv."),
    (r"\.mha_op\.in_proj_(weight|bias)$", r".token_mixer.qkv.\1"),
    (r"\.mha_op\.out_proj\.", ".token_mixer.proj."),
    (r"\.ls1\.gamma$", ".layer_scale2.scale"),  # branch 1 is the CPE
    (r"\.ls2\.gamma$", ".layer_scale3.scale"),
]
_HEAD = [
    (r"^head\.", "head.fc."),
    (r"^tklb_aux_head\.", "head.aux."),
    (r"^norm\.", "head.norm."),  # BatchNorm of the map, before the mean
]
_BLOCK = re.compile(r"^stages\.\d+\.blocks\.\d+\.")


@official("glnet", source="rayleizhu/GLMix models/glnet.py, models/glnet_tklb.py")
def convert_glnet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official GLNet keys -> ours: renames, and layer scales (1, C, 1, 1) -> (C,); every other tensor unchanged."""
    glmix_blocks = {m.group(0) for key in state_dict if (m := _BLOCK.match(key)) and ".relation_mha." in key}
    stem = _STEM_PATCHIFY if "downsample_layers.0.0.weight" in state_dict else _STEM_OVERLAPPED
    out = {}
    for key, value in state_dict.items():
        block = _BLOCK.match(key)
        renames = _HEAD + stem if block is None else _MLP + (_GLMIX if block.group(0) in glmix_blocks else _MHSA)
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value.reshape(-1) if key.endswith("layer_scale.scale") or re.search(r"layer_scale\d\.scale$", key) \
            else value
    return out


def load_glnet(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official GLNet state_dict into ``model`` strictly; returns the model."""
    _load_strict(model, convert_glnet(state_dict), source="the official GLNet weights", theirs="official")
    return model
