"""Official GhostNetV2 checkpoints (huawei-noah/Efficient-AI-Backbones ``ghostnetv2_pytorch/model/ghostnetv2_torch.py``,
``ck_ghostnetv2_{10,13,16}.pth.tar``; timm's train script keeps them under ``state_dict``/``state_dict_ema``) ->
metablocks keys.

    model = convert_official("ck_ghostnetv2_10.pth.tar", "ghostnetv2_100")

The official module names are timm's (timm's ghostnet.py was ported from it; measured: the same keys and shapes, and
the official model's logits equal ours bit for bit), so this is the timm converter (metablocks/interop/families/
ghostnet.py) registered for the official files too.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.ghostnet import convert_ghostnet
from metablocks.interop.official import official


@official("ghostnetv2", source="huawei-noah/Efficient-AI-Backbones ghostnetv2_pytorch/model/ghostnetv2_torch.py")
def convert_ghostnetv2(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official (= timm) GhostNetV2 keys -> ours: renames only."""
    return convert_ghostnet(dict(state_dict))
