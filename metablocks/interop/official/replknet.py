"""Official RepLKNet weights (DingXiaoH/RepLKNet-pytorch ``replknet.py``; the released ``*.pth`` are the training
form, a plain state_dict) -> metablocks keys.

The official model is ``stem.0..3`` (conv-BN-ReLU each), ``stages.i.blocks`` alternating a RepLKBlock (even index:
``prelkb_bn``, ``pw1``, ``large_kernel.lkb_origin`` + ``large_kernel.small_conv``, ``pw2``) and a ConvFFN (odd index:
``preffn_bn``, ``pw1``, ``pw2``), ``transitions.i`` (conv-BN-ReLU 1x1, then a depthwise 3x3 s2) between stages, the
final BN ``norm`` and ``head``. Our block i holds both: official block 2i is our token mixer (its pre-BN our
``norm1``), block 2i + 1 our channel mixer (its pre-BN our ``norm2``). No tensor changes.

Only the training form is accepted: a checkpoint saved after ``structural_reparam()`` or built with
``small_kernel_merged=True`` (``large_kernel.lkb_reparam``) is refused with an OfficialWeightsError saying so; load the
training form and call ``metablocks.deploy(model)`` to get our deployed model.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import OfficialWeightsError, official


def _block(match: re.Match) -> str:
    index = int(match.group(2))
    part = ("token_mixer", "channel_mixer")[index % 2]
    return f"stages.{match.group(1)}.blocks.{index // 2}.{part}."


RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"^stem\.(\d)\.bn\.", r"stem.layers.\1.norm."),
    (r"^stem\.(\d)\.conv\.", r"stem.layers.\1.conv."),
    (r"^transitions\.(\d)\.(\d)\.bn\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample.layers.{m.group(2)}.norm."),
    (r"^transitions\.(\d)\.(\d)\.conv\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample.layers.{m.group(2)}.conv."),
    (r"\.token_mixer\.prelkb_bn\.", ".norm1."),
    (r"\.channel_mixer\.preffn_bn\.", ".norm2."),
    (r"\.large_kernel\.lkb_origin\.", ".large_kernel.large."),
    (r"\.large_kernel\.small_conv\.", ".large_kernel.small."),
    (r"^head\.", "head.fc."),
    (r"^norm\.", "head.norm."),  # BN of the map, before the pooling
]


@official("replknet", source="DingXiaoH/RepLKNet-pytorch replknet.py")
def convert_replknet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official RepLKNet keys -> ours (tensors unchanged: every layer has the official shape)."""
    merged = sorted(k for k in state_dict if ".lkb_reparam." in k)
    if merged:
        raise OfficialWeightsError(
            "this is a deployed (re-parameterized) RepLKNet checkpoint "
            f"({len(merged)} keys such as {merged[0]} exist only after structural_reparam() / small_kernel_merged=True); "
            "convert the training-form checkpoint (the released .pth files are) and call metablocks.deploy(model)")
    out = {re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", _block, key): value for key, value in state_dict.items()}
    return rename(out, RENAMES)
