"""Next-ViT's per-block patch embedding, the transition a block carries when it strides or changes the width (Li et
al., "Next-ViT: Next Generation Vision Transformer for Efficient Deployment in Realistic Industrial Scenarios", 2022,
https://arxiv.org/abs/2207.05501):

    stride s > 1:       norm(Conv1x1(AvgPool_s(x)))     (s x s windows, ceil mode, padding not counted)
    width change only:  norm(Conv1x1(x))
    neither:            x                               (no weights: the identity)

It changes the width: the block grammar builds it with the incoming width as ``dim`` and the block's as ``out_dim``
(and the stage's ``stride``). Names follow timm's ``PatchEmbed`` (``pool``, ``conv``, ``norm``); Next-ViT's NTB uses
the same module, unstrided, as the ``projection`` to the MHCA part of its channels.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar

from torch import Tensor, nn

from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class PatchEmbedConfig(Component):
    layout = "channels_first"
    changes_width: ClassVar[bool] = True
    norm: Annotated[Component, Ref("norm")] = "batchnorm"

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        out = ctx.out_dim if ctx.out_dim is not None else ctx.dim
        if ctx.stride == 1 and out == ctx.dim:
            return []
        return [(("norm",), self.norm, Context(out))]

    def build(self, ctx: Context) -> nn.Module:
        return PatchEmbed(ctx.dim, out_dim=ctx.out_dim, stride=ctx.stride, norm=self.norm)


@register("channel_mixer", "patch_embed", config=PatchEmbedConfig)
class PatchEmbed(nn.Module):
    """norm(conv1x1(avgpool_s(x))) on (B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s)); the identity when
    neither the width nor the size changes (Next-ViT)."""

    def __init__(self, dim: int, *, out_dim: int | None = None, stride: int = 1, norm: Component) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.pool = (nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False) if stride > 1
                     else nn.Identity())
        if stride > 1 or out_dim != dim:
            self.conv = nn.Conv2d(dim, out_dim, 1, bias=False)
            self.norm = build_at(norm, out_dim, "channels_first")
        else:
            self.conv, self.norm = nn.Identity(), nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W)
        return self.norm(self.conv(self.pool(x)))

