"""Official OSNet weights (KaiyangZhou/deep-person-reid ``torchreid/models/osnet.py``; the ImageNet-pretrained
``osnet_x*_imagenet.pth`` files are bare state_dicts, torchreid's own checkpoints hold one under ``state_dict``) ->
metablocks keys.

    model = convert_official("osnet_x1_0_imagenet.pth", "osnet_x1_0")

The official ``conv2``/``conv3`` are Sequentials of two OSBlocks and the transition (``.2``: Conv1x1 + AvgPool), which
opens our next stage (its plain first block, which carries the stride); ``conv4`` has no transition, ``conv5`` is our
last stage's (no blocks) downsample. Every tensor keeps its shape; only the names change:

    conv1.conv / .bn                          stem.conv1 / stem.bn1
    convS.j (OSBlock)                         stages.i.blocks.j'.token_mixer (conv1, conv3 as they are)
        .conv2a  .conv2b.l  .conv2c.l  .conv2d.l    .streams.0.0  .streams.1.l  .streams.2.l  .streams.3.l
        .gate.fc1 / .gate.fc2                 .gate.down / .gate.up (the one gate shared by the four streams)
        .downsample.conv / .bn                stages.i.blocks.j'.shortcut.conv / .norm (the 1x1 projection)
    conv2.2.0 / conv3.2.0 (transitions)       stages.1.blocks.0.token_mixer / stages.2.blocks.0.token_mixer
    conv5.conv / .bn                          stages.3.downsample.layers.0.conv / .norm
    fc.0 / fc.1 / classifier                  head.embed / head.norm / head.fc
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official

# official Sequential (conv2, conv3, conv4) -> our stage and the offset of its OSBlocks (stages 1, 2 start with the
# transition that closes the official Sequential before them)
_STAGES = {2: (0, 0), 3: (1, 1), 4: (2, 1)}

_INSIDE = [
    (r"\.conv2a\.", ".streams.0.0."),
    (r"\.conv2b\.(\d+)\.", r".streams.1.\1."),
    (r"\.conv2c\.(\d+)\.", r".streams.2.\1."),
    (r"\.conv2d\.(\d+)\.", r".streams.3.\1."),
    (r"\.gate\.fc1\.", ".gate.down."),
    (r"\.gate\.fc2\.", ".gate.up."),
    (r"\.token_mixer\.downsample\.conv\.", ".shortcut.conv."),
    (r"\.token_mixer\.downsample\.bn\.", ".shortcut.norm."),
]
_OUTSIDE = [
    (r"^conv1\.conv\.", "stem.conv1."),
    (r"^conv1\.bn\.", "stem.bn1."),
    (r"^conv5\.conv\.", "stages.3.downsample.layers.0.conv."),
    (r"^conv5\.bn\.", "stages.3.downsample.layers.0.norm."),
    (r"^fc\.0\.", "head.embed."),
    (r"^fc\.1\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]
_LAYER = re.compile(r"^conv([234])\.(\d+)\.(.*)$")


def _layer(match: re.Match) -> str:
    stage, offset = _STAGES[int(match[1])]
    j, rest = int(match[2]), match[3]
    if rest.startswith("0.") and j == 2:  # the transition (Conv1x1 in a Sequential with the pool): the next stage's
        return f"stages.{stage + 1}.blocks.0.token_mixer.{rest.removeprefix('0.')}"
    return f"stages.{stage}.blocks.{j + offset}.token_mixer.{rest}"


@official("osnet", source="KaiyangZhou/deep-person-reid torchreid/models/osnet.py")
def convert_osnet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official OSNet keys -> ours (renames only; a DDP ``module.`` prefix is dropped)."""
    renamed = {_LAYER.sub(_layer, re.sub(r"^module\.", "", k)): v for k, v in state_dict.items()}
    return rename(rename(renamed, _INSIDE), _OUTSIDE)
