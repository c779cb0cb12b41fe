"""PiT's pooling layer: a strided depthwise convolution of the map, and a linear layer for the prefix tokens carried
across it (Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", ICCV 2021, Fig. 4; ``conv_head_pooling``
in naver-ai/pit)."""
from __future__ import annotations

from torch import Tensor, nn

from metablocks.components.common.conv_arith import conv_out, too_small
from metablocks.fields import Stride
from metablocks.registry import Component, Context, register


class ConvHeadPoolingConfig(Component):
    layout = "channels_first"
    tokens = "apply"  # the prefix tokens carried in cross it through ``forward_prefix`` (its linear layer)
    stride: Stride = 2  # the kernel is stride + 1, the padding stride // 2 (PiT)

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.stride + 1, self.stride, self.stride // 2)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.out_dim is not None and ctx.out_dim % ctx.dim:
            errors.append(f"a depthwise pooling conv takes a width that is a multiple of its input's: {ctx.dim} -> "
                          f"{ctx.out_dim} is not (PiT doubles it)")
        out = self.out_resolution(ctx.resolution) if ctx.resolution else None
        return errors + too_small(ctx.resolution, out, f"stride-{self.stride} pooling conv")

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a downsample needs the stage's dim"
        return ConvHeadPooling(ctx.dim, ctx.out_dim, stride=self.stride, prefix=bool(ctx.prefix))


@register("downsample", "conv_head_pooling", config=ConvHeadPoolingConfig)
class ConvHeadPooling(nn.Module):
    """map -> DWConv_{s+1, stride s}(map) (C_in -> C_out, groups C_in); prefix tokens -> Linear(C_in, C_out) (PiT,
    Heo et al. 2021). Without prefix tokens carried in (a map model) it has no linear layer."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 2, prefix: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, stride + 1, stride=stride, padding=stride // 2, groups=in_dim)
        self.fc = nn.Linear(in_dim, out_dim) if prefix else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H / s, W / s)
        return self.conv(x)

    def forward_prefix(self, prefix: Tensor) -> Tensor:  # (B, P, C_in) -> (B, P, C_out)
        assert self.fc is not None, "built without prefix tokens"
        return self.fc(prefix)
