"""Official NiNformer weights (Abdullah-88/NiNformer: ``ninformer.py``'s block stack ``model``, train.py's ``patcher``
and ``classifier``) -> metablocks keys: a NiNBlock's shared ``norm`` is our ``ln`` slot, its gating unit
``mgu`` our ``token_mixer`` (a gate: ``proj`` and ``f``, the MLP-Mixer block), its ``ffn`` our ``channel_mixer``.

    load_ninformer(metablocks.create_model("ninformer_cifar10"), torch.load("NiNformerImageClassification_cifar10.pth"))
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official
from metablocks.interop.timm import _load_strict

RENAMES: list[tuple[str, str]] = [
    (r"^patcher\.", "stem.conv."),
    (r"^classifier\.", "head.fc."),
    (r"^model\.(\d+)\.", r"stages.0.blocks.\1."),
    (r"(^|\.)norm\.", r"\1ln."),  # NiNBlock.norm: one LayerNorm for both branches
    (r"(^|\.)mgu\.Mixer\.token_mix\.0\.", r"\1token_mixer.f.norm1."),
    (r"(^|\.)mgu\.Mixer\.token_mix\.2\.net\.0\.", r"\1token_mixer.f.token_mixer.fc1."),
    (r"(^|\.)mgu\.Mixer\.token_mix\.2\.net\.3\.", r"\1token_mixer.f.token_mixer.fc2."),
    (r"(^|\.)mgu\.Mixer\.channel_mix\.0\.", r"\1token_mixer.f.norm2."),
    (r"(^|\.)mgu\.Mixer\.channel_mix\.1\.net\.0\.", r"\1token_mixer.f.channel_mixer.fc1."),
    (r"(^|\.)mgu\.Mixer\.channel_mix\.1\.net\.3\.", r"\1token_mixer.f.channel_mixer.fc2."),
    (r"(^|\.)mgu\.proj\.", r"\1token_mixer.proj."),
    (r"(^|\.)ffn\.net\.0\.", r"\1channel_mixer.fc1."),
    (r"(^|\.)ffn\.net\.3\.", r"\1channel_mixer.fc2."),
]


@official("ninformer", source="Abdullah-88/NiNformer ninformer.py")
def convert_ninformer(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official NiNformer keys -> ours: a whole model's (``model.i.``, ``patcher``, ``classifier``) or one
    NiNBlock's (its keys then map to one of our blocks')."""
    return rename(dict(state_dict), RENAMES)


def load_ninformer(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load an official NiNformer state_dict (a model's, or a NiNBlock's into one Block) strictly; returns it."""
    _load_strict(model, convert_ninformer(state_dict), source="the official NiNformer weights", theirs="official")
    return model
