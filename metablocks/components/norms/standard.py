"""Normalization layers (kind ``norm``): LayerNorm in either layout, GroupNorm, BatchNorm."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Eps, Groups, Momentum
from metablocks.registry import Component, Context, register


class LayerNormConfig(Component):
    takes_vector = True
    tokens = "apply"  # per token: prefix tokens are normalized as the map's (ViT's norm1/norm2 on the class token)
    bias: bool = True
    eps: Eps = 1e-6


@register("norm", "layernorm", config=LayerNormConfig)
class LayerNorm(nn.LayerNorm):
    """Layer normalization over channels, channels-last or channels-first (Ba et al., "Layer Normalization", 2016)."""

    def __init__(self, dim: int, *, bias: bool = True, eps: float = 1e-6, channels_last: bool = True) -> None:
        super().__init__(dim, eps=eps, bias=bias)
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channels_last={self.channels_last}"


class GroupNormConfig(Component):
    layout = "channels_first"
    num_groups: Groups = 1
    bias: bool = True
    eps: Eps = 1e-5

    def check(self, ctx: Context) -> list[str]:
        if ctx.dim % self.num_groups:
            return [f"num_groups={self.num_groups} does not divide dim={ctx.dim}"]
        return []


@register("norm", "groupnorm", config=GroupNormConfig)
class GroupNorm(nn.GroupNorm):
    """Group normalization; num_groups=1 normalizes over (C, H, W) as in PoolFormer (Wu & He, "Group Normalization", 2018)."""

    def __init__(self, dim: int, *, num_groups: int = 1, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__(num_groups, dim, eps=eps)
        if not bias:
            self.bias = None


class BatchNormConfig(Component):
    layout = "channels_first"
    eps: Eps = 1e-5
    momentum: Momentum = 0.1


@register("norm", "batchnorm", config=BatchNormConfig)
class BatchNorm(nn.BatchNorm2d):
    """Batch normalization over (B, H, W) (Ioffe & Szegedy, "Batch Normalization", 2015)."""

    def __init__(self, dim: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(dim, eps=eps, momentum=momentum)

    def _check_input_dim(self, input: Tensor) -> None:
        """No runtime check: the layout contract gives (B, C, H, W), and torch.fx cannot branch on a traced ndim."""
