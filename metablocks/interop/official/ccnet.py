"""Official CCNet weights (speedinghzl/CCNet ``networks/ccnet.py``, ``Seg_Model``: the dilated ResNet-101 + RCCA head
for Cityscapes; checkpoints are a plain state_dict, or one under ``model``) -> metablocks keys (``ccnet_resnet101``).

The official model is the deep stem (``conv1..3``, ``bn1..3``), ``layer1..4`` (Bottlenecks: ``conv1..3``, ``bn1..3``,
``downsample.0`` / ``.1`` the projection), ``head`` (RCCAModule: ``conva``, ``cca``, ``convb``, ``bottleneck`` whose
index 3 is the classifier) and ``dsn``, the auxiliary head on layer 3 used only by the training loss (dropped).

One tensor transformation: every norm is mapillary's InPlaceABN(Sync), which scales by ``|weight| + eps`` (eps = 1e-5,
its default; src/inplace_abn_cpu.cpp), not by ``weight``; our BatchNorms take ``|weight| + 1e-5`` (:func:`abn_weight`).
Biases and running statistics are as they are (its BN eps is the same 1e-5). The activations (identity in the
backbone's ABNs, followed by ReLU; leaky ReLU 0.01 in the head's) are the recipe's.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official

ABN_EPS = 1e-5  # InPlaceABN's default eps: the scale is |weight| + eps


def abn_weight(weight: Tensor, eps: float = ABN_EPS) -> Tensor:
    """An InPlaceABN weight -> the BatchNorm weight that computes the same: ``|weight| + eps``."""
    return weight.abs() + eps


RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"^(conv|bn)([123])\.", r"stem.\1\2."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.shortcut.conv."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.shortcut.norm."),
    (r"^layer(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.token_mixer."),
    (r"^head\.bottleneck\.3\.", "head.fc."),  # the 1x1 classifier after BN-leaky ReLU and Dropout2d
]


@official("ccnet", source="speedinghzl/CCNet networks/ccnet.py",
          drops=(r"^dsn\.",))  # the auxiliary head on layer 3: only the training loss reads it (4,729,875 params)
def convert_ccnet(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official CCNet keys -> ours; every InPlaceABN weight w -> |w| + 1e-5 (the BatchNorm computing the same)."""
    norms = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}
    out = rename(dict(state_dict), RENAMES)
    return {key: abn_weight(value) if key in norms else value for key, value in out.items()}
