"""timm Next-ViT (``nextvit_*``) -> metablocks keys.

The stem's layers ``stem.i`` are ``stem.layers.i``; timm's final ``norm`` is our head's (``norm_first``). In an NCB,
timm's ``mhca`` is our ``token_mixer`` and its one ``norm`` our ``norm1``; in an NTB (a block with ``e_mhsa``),
``e_mhsa`` is our ``token_mixer`` and ``mhca`` the token mixer of the residual block in the concat branch
(``mhca.token_mixer``). ``patch_embed``, ``projection``, ``norm1``/``norm2`` of an NTB and the MLP keep their names
(timm's ``mlp`` is our ``channel_mixer`` by the common rename).
"""
from __future__ import annotations

import re

from torch import Tensor

from metablocks.interop.timm import register_converter

_BLOCK = re.compile(r"^(stages\.\d+\.blocks\.\d+)\.([a-z_0-9]+)\.(.*)$")
_NCB = {"mhca": "token_mixer", "norm": "norm1"}
_NTB = {"e_mhsa": "token_mixer", "mhca": "mhca.token_mixer"}


def nextvit_key(key: str, transformer_blocks: set[str]) -> str:
    """One timm key -> ours; ``transformer_blocks``: the ``stages.i.blocks.j`` prefixes that are NTBs."""
    if key.startswith("stem."):
        return "stem.layers." + key[len("stem."):]
    if key.startswith("norm."):
        return "head." + key
    match = _BLOCK.match(key)
    if match is None:
        return key
    block, part, rest = match.groups()
    renames = _NTB if block in transformer_blocks else _NCB
    return f"{block}.{renames.get(part, part)}.{rest}"


@register_converter("nextvit")
def convert_nextvit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    transformer_blocks = {m[1] for key in state_dict if (m := _BLOCK.match(key)) and m[2] == "e_mhsa"}
    return {nextvit_key(key, transformer_blocks): value for key, value in state_dict.items()}
