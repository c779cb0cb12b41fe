"""Multi-head convolutional attention (MHCA) token mixer (Li et al., "Next-ViT: Next Generation Vision Transformer
for Efficient Deployment in Realistic Industrial Scenarios", 2022, https://arxiv.org/abs/2207.05501).

    MHCA(z) = Proj(relu(BN(GroupConv3x3(z))))      one 3x3 conv per head of head_dim channels

Names follow timm's ``ConvAttention`` (``group_conv3x3``, ``norm``, ``projection``).
"""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import Heads, Kernel
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class MhcaConfig(Component):
    layout = "channels_first"
    head_dim: Heads = 32  # channels per group of the 3x3 conv (groups = dim / head_dim)
    kernel_size: Kernel = 3
    norm: Annotated[Component, Ref("norm")] = "batchnorm"
    act: Annotated[Component, Ref("act")] = "relu"

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.dim % self.head_dim:
            errors.append(f"dim={ctx.dim} is not divisible by head_dim={self.head_dim} (the grouped conv has one "
                          f"group per head)")
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map's size, got {self.kernel_size}")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim, resolution=ctx.resolution))]


@register("token_mixer", "mhca", config=MhcaConfig)
class MHCA(nn.Module):
    """Proj(act(norm(GroupConv(x)))) on (B, C, H, W): a 3x3 conv per head, then a 1x1 conv mixing the heads (Next-ViT)."""

    def __init__(self, dim: int, *, head_dim: int = 32, kernel_size: int = 3, norm: Component,
                 act: Component) -> None:
        super().__init__()
        self.group_conv3x3 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim // head_dim,
                                       bias=False)
        self.norm = build_at(norm, dim, "channels_first")
        self.act = inplace_act(act)  # after a norm
        self.projection = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.projection(self.act(self.norm(self.group_conv3x3(x))))
