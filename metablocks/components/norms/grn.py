"""Global Response Normalization, kind ``norm`` (Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with
Masked Autoencoders", CVPR 2023)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metablocks.fields import Eps
from metablocks.registry import Component, register


class GrnConfig(Component):
    bias: bool = True
    eps: Eps = 1e-6


@register("norm", "grn", config=GrnConfig)
class GRN(nn.Module):
    """x + gamma * (x * N(x)) + beta, N(x) = ||x||_HW / mean_C ||x||_HW: channels compete by their global energy.

    ``gamma`` and ``beta`` start at zero, so the layer starts as the identity (ConvNeXt V2, Woo et al. 2023).
    Works channels-last (B, H, W, C) or channels-first (B, C, H, W).
    """

    def __init__(self, dim: int, *, bias: bool = True, eps: float = 1e-6, channels_last: bool = True) -> None:
        super().__init__()
        self.eps, self.channels_last = eps, channels_last
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:  # one branch per layout (TorchScript types each branch's tuples on their own)
            energy = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
            response = energy / (energy.mean(dim=-1, keepdim=True) + self.eps)
            shape = [-1]
        else:
            energy = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
            response = energy / (energy.mean(dim=1, keepdim=True) + self.eps)
            shape = [-1, 1, 1]
        out = x + self.gamma.reshape(shape) * (x * response)
        return out if self.beta is None else out + self.beta.reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.gamma.numel()}, bias={self.beta is not None}, channels_last={self.channels_last}"
