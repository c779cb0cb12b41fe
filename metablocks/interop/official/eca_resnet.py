"""Official ECA-Net checkpoints (github.com/BangguWu/ECANet ``models/eca_resnet.py``; the README's
``eca_resnet50_k3557.pth.tar`` ... hold them under ``state_dict``, with DDP's ``module.`` prefix) -> metablocks keys.

    model = convert_official("eca_resnet50_k3557.pth.tar", "eca_resnet50")

The official ResNet is torchvision's layout, as timm's plain ResNet (``conv1``/``bn1`` stem, ``layer{i}.{j}``
blocks, ``downsample.0``/``.1`` projection, ``fc``), so the keys go through timm's ResNet mapping; the only
difference is the gate's name, ``eca`` there, ``se`` (timm's) in our bottleneck. No tensor changes shape. The
timm-named ECA-ResNet-D recipes of this folder (``ecaresnet*``) load timm's weights (``load_pretrained``) instead.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.resnet import resnet_key
from metablocks.interop.official import official


@official("eca_resnet", source="BangguWu/ECANet models/eca_resnet.py")
def convert_eca_resnet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official ECA-ResNet keys -> ours (``layer1.0.eca.conv.weight`` -> ``stages.0.blocks.0.token_mixer.se.conv.weight``)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = re.sub(r"^module\.", "", key)
        out[resnet_key(re.sub(r"\.eca\.", ".se.", key))] = value
    return out
