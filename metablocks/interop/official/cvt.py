"""Official CvT weights (microsoft/CvT ``lib/models/cls_cvt.py``) -> metablocks keys.

    model = convert_official("CvT-13-224x224-IN-1k.pth", "cvt_13")

The official model is ``stage0..2`` (each a VisionTransformer: ``patch_embed`` = ``proj`` conv + ``norm`` LayerNorm,
``blocks``, and in the last stage ``cls_token``), then ``norm`` (of the class token) and ``head``. Its blocks are
``norm1``, ``attn``, ``norm2``, ``mlp``; the attention's names (``conv_proj_{q,k,v}.{conv,bn}``, ``proj_{q,k,v}``,
``proj``) are ours. Stage 0's token embedding is our stem, the others' our downsamples. Tensors are unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import official

RENAMES = [
    (r"^stage0\.patch_embed\.proj\.", "stem.conv."),
    (r"^stage0\.patch_embed\.norm\.", "stem.norm."),
    (r"^stage(\d)\.patch_embed\.proj\.", r"stages.\1.downsample.conv."),
    (r"^stage(\d)\.patch_embed\.norm\.", r"stages.\1.downsample.norm."),
    (r"^stage(\d)\.cls_token$", r"stages.\1.prefix_tokens.cls"),
    (r"^stage(\d)\.blocks\.", r"stages.\1.blocks."),
    (r"\.attn\.", ".token_mixer."),
    (r"\.mlp\.", ".channel_mixer."),
    (r"^norm\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]


@official("cvt", source="microsoft/CvT lib/models/cls_cvt.py")
def convert_cvt(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official CvT keys -> ours (renamed only: stem, downsamples, class token, blocks, head)."""
    return rename(dict(state_dict), RENAMES)
