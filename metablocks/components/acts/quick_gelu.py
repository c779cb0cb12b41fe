"""QuickGELU, x * sigmoid(1.702 x): the sigmoid approximation of GELU (Hendrycks & Gimpel, "Gaussian Error Linear
Units", 2016, section 2), the activation of OpenAI's CLIP and of the official CvT code (Wu et al. 2021)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metablocks.components.acts.elementwise import Activation
from metablocks.registry import register


@register("act", "quick_gelu", config=Activation)
class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x) elementwise (Hendrycks & Gimpel 2016)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)
