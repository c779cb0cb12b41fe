"""Official UniRepLKNet weights (AILab-CVC/UniRepLKNet ``unireplknet.py``; the released ``*.pth`` are the training
form, a plain state_dict) -> metablocks keys.

The official model is ``downsample_layers`` (0: the stem, conv-LN-GELU-conv-LN; 1-3: conv 3x3 s2 + LN), ``stages.i.j``
(UniRepLKNetBlocks), ``norm`` and ``head``. A block is ``dwconv`` (a bare depthwise 3x3 or a DilatedReparamBlock, whose
``lk_origin`` / ``origin_bn`` / ``dil_conv_k*`` / ``dil_bn_k*`` we keep under the same names), ``norm`` (BN), ``se``,
``pwconv1.1`` (Linear, channels-last), ``act.1`` (GRN with (1, 1, 1, C) parameters), ``pwconv2.0`` (Linear, no bias),
``pwconv2.2`` (BN) and ``gamma`` (the layer scale). Our GRN MLP runs on NCHW with 1x1 convs, so the Linears become
(O, I, 1, 1) and the GRN parameters (C,); nothing else changes.

A deployed checkpoint (saved after ``reparameterize_unireplknet()``, or built with ``deploy=True``: the dilated
branches and the BN merged into a biased ``dwconv``, GRN's beta, the BN and ``gamma`` folded into a biased
``pwconv2.0``) is recognised by those biases; its keys are exactly those of our deployed model, so the model is first
folded in place with ``metablocks.deploy(model)`` and the weights then load into that form.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from metablocks.interop.families.convnext import rename
from metablocks.interop.official import OfficialWeightsError, official

RENAMES: list[tuple[str, str]] = [
    (r"^downsample_layers\.0\.0\.", "stem.layers.0.conv."),  # conv 3x3 s2 (C/2), LN, GELU, conv 3x3 s2 (C), LN
    (r"^downsample_layers\.0\.1\.", "stem.layers.0.norm."),
    (r"^downsample_layers\.0\.3\.", "stem.layers.1.conv."),
    (r"^downsample_layers\.0\.4\.", "stem.layers.1.norm."),
    (r"^downsample_layers\.(\d)\.0\.", r"stages.\1.downsample.conv."),
    (r"^downsample_layers\.(\d)\.1\.", r"stages.\1.downsample.norm."),
    (r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"(blocks\.\d+)\.gamma$", r"\1.layer_scale1.scale"),  # the block's layer scale (not GRN's act.1.gamma)
    (r"\.dwconv\.(weight|bias)$", r".token_mixer.conv.\1"),  # a bare depthwise 3x3 (kernel < 7); bias: deployed
    (r"\.dwconv\.", ".token_mixer."),  # DilatedReparamBlock: lk_origin, origin_bn, dil_conv_k*_*, dil_bn_k*_*
    (r"(blocks\.\d+)\.norm\.", r"\1.norm1."),  # BN after the depthwise conv
    (r"\.se\.", ".channel_mixer.se."),
    (r"\.pwconv1\.1\.", ".channel_mixer.fc1."),
    (r"\.act\.1\.", ".channel_mixer.norm."),  # GRN gamma, beta
    (r"\.pwconv2\.0\.", ".channel_mixer.fc2."),
    (r"\.pwconv2\.2\.", ".channel_mixer.out_norm."),
    (r"^head\.", "head.fc."),
    (r"^norm\.", "head.norm."),  # LayerNorm of the pooled features
]

_DEPLOYED = re.compile(r"(\.dwconv\.lk_origin\.bias|\.pwconv2\.0\.bias)$")


@official("unireplknet", source="AILab-CVC/UniRepLKNet unireplknet.py")
def convert_unireplknet(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official UniRepLKNet keys -> ours: Linear (O, I) -> 1x1 conv (O, I, 1, 1), GRN (1, 1, 1, C) -> (C,); a deployed
    checkpoint folds ``model`` into its deployed form first (in place)."""
    if any(_DEPLOYED.search(k) for k in state_dict):
        if model is None:
            raise OfficialWeightsError("a deployed (re-parameterized) UniRepLKNet checkpoint needs the model to fold "
                                       "into its deployed form first: pass the built model")
        from metablocks.deploy import deploy

        deploy(model)  # in place; a no-op on a model deployed already
    out = {}
    for key, value in rename(dict(state_dict), RENAMES).items():
        if re.search(r"\.channel_mixer\.fc[12]\.weight$", key) and value.ndim == 2:
            value = value[:, :, None, None]
        elif re.search(r"\.channel_mixer\.norm\.(gamma|beta)$", key):
            value = value.reshape(-1)
        out[key] = value
    return out
