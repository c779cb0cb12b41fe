"""Leaky ReLU activation, max(x, slope * x) (Maas et al., "Rectifier Nonlinearities Improve Neural Network Acoustic
Models", ICML 2013); slope 0.01 is the default of InPlaceABN, the BN + activation of the official CCNet heads."""
from __future__ import annotations

from pydantic import Field
from torch import nn

from metablocks.components.acts.elementwise import Activation
from metablocks.fields import MAX_SCALE
from metablocks.registry import register


class LeakyReluConfig(Activation):
    negative_slope: float = Field(0.01, ge=0.0, le=MAX_SCALE)


@register("act", "leaky_relu", config=LeakyReluConfig)
class LeakyReLU(nn.LeakyReLU):
    """max(x, negative_slope * x) elementwise (Maas et al. 2013)."""

    def __init__(self, *, negative_slope: float = 0.01) -> None:
        super().__init__(negative_slope)
