"""Identity token mixer: IdentityFormer (Yu et al., "MetaFormer Baselines for Vision", 2022)."""
from __future__ import annotations

from torch import nn

from metablocks.registry import Component, register


@register("channel_mixer", "identity", config=Component)  # also a channel mixer: a part left as it is (split)
@register("token_mixer", "identity", config=Component)
class IdentityMixer(nn.Identity):
    """No token mixing at all: the MetaFormer lower bound (IdentityFormer, Yu et al. 2022)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
