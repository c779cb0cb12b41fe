"""timm byoanet HaloNets (``halonet*``, ``sehalonet*``, ``eca_halonext*``) -> metablocks keys.

timm's ByobNet keeps conv-BN(-act) pairs as ``ConvNormAct`` (``.conv``, ``.bn``): the tiered stem's
``stem.conv{i}``, and per block ``stages.i.j`` the bottleneck's ``conv1_1x1``, ``conv2_kxk``, ``conv3_1x1``, the
channel gate ``attn`` (SE/ECA after the 3x3 conv: our ``se`` with ``attn_at: mid``), the self-attention block's
``self_attn`` (halo attention, our ``spatial``) and ``post_attn`` (its BN-act, our ``bn2``), the ``shortcut``;
``final_conv`` (sehalonet33ts' 1x1 conv to 1280) and the classifier ``head.fc``. Ours: the same blocks under
``stages.i.blocks.j.token_mixer`` (timm's torchvision-like conv1/bn1 ... names), ``final_conv`` as the downsample of a
depth-0 fifth stage.
"""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.families.convnext import rename
from metablocks.interop.timm import register_converter

BLOCKS = [
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.conv\.", r"stages.\1.blocks.\2.shortcut.conv."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.bn\.", r"stages.\1.blocks.\2.shortcut.norm."),
    (r"^stages\.(\d+)\.(\d+)\.conv(\d)_(?:1x1|kxk)\.conv\.", r"stages.\1.blocks.\2.token_mixer.conv\3."),
    (r"^stages\.(\d+)\.(\d+)\.conv(\d)_(?:1x1|kxk)\.bn\.", r"stages.\1.blocks.\2.token_mixer.bn\3."),
    (r"^stages\.(\d+)\.(\d+)\.self_attn\.", r"stages.\1.blocks.\2.token_mixer.spatial."),
    (r"^stages\.(\d+)\.(\d+)\.post_attn\.", r"stages.\1.blocks.\2.token_mixer.bn2."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.fc1\.", r"stages.\1.blocks.\2.token_mixer.se.down."),  # SEModule
    (r"^stages\.(\d+)\.(\d+)\.attn\.fc2\.", r"stages.\1.blocks.\2.token_mixer.se.up."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.", r"stages.\1.blocks.\2.token_mixer.se."),  # EcaModule: conv
]
RESNET_STEM = [(r"^stem\.conv(\d)\.conv\.", r"stem.conv\1."), (r"^stem\.conv(\d)\.bn\.", r"stem.bn\1.")]


def _stack_stem(key: str) -> str:
    """``stem.conv2.bn.weight`` -> ``stem.layers.1.norm.weight`` (a conv_stack stem)."""
    match = re.match(r"^stem\.conv(\d)\.(conv|bn)\.(.*)$", key)
    if match is None:
        return key
    return f"stem.layers.{int(match[1]) - 1}.{'conv' if match[2] == 'conv' else 'norm'}.{match[3]}"


def _final_conv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``final_conv.{conv,bn}`` -> the downsample of the stage after the last one with blocks."""
    last = max((int(k.split(".")[1]) for k in state_dict if k.startswith("stages.")), default=-1)
    prefix = f"stages.{last + 1}.downsample.layers.0."
    return {re.sub(r"^final_conv\.(conv|bn)\.", lambda m: prefix + ("conv." if m[1] == "conv" else "norm."), k): v
            for k, v in state_dict.items()}


@register_converter("halonet")
@register_converter("eca_halonext")
def convert_halonet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The max-pool stems (``halonet26t``, ``halonet50ts``, ``halonet_h1``, ``eca_halonext26ts``): the ResNet stem."""
    return rename(_final_conv(dict(state_dict)), RESNET_STEM + BLOCKS)


@register_converter("sehalonet")
def convert_sehalonet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``sehalonet33ts``: its stem has no pool (the third conv strides), so ours is a conv_stack."""
    renamed = rename(_final_conv(dict(state_dict)), BLOCKS)
    return {_stack_stem(k): v for k, v in renamed.items()}
