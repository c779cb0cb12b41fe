"""FFNet's downsample: a strided RepVGG depthwise conv to the new width, then a residual BN -> 1x1 conv (Yun et al.,
"FFNet: MetaMixer-based Efficient Convolutional Mixer Design", 2024)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metablocks.components.common.conv_arith import conv_out, too_small
from metablocks.components.token_mixers.repvgg_dw import RepVGGDW, RepVGGDWConfig
from metablocks.fields import Kernel, Stride
from metablocks.registry import Component, Context, register


class RepVGGMergingConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 7
    small_kernel: Kernel | None = 3
    stride: Stride = 2

    def out_resolution(self, resolution: tuple[int, int]) -> tuple[int, int]:
        return conv_out(resolution, self.kernel_size, self.stride, self.kernel_size // 2)

    def check(self, ctx: Context) -> list[str]:
        errors = RepVGGDWConfig(kernel_size=self.kernel_size, small_kernel=self.small_kernel).check(ctx)
        out = self.out_resolution(ctx.resolution) if ctx.resolution else None
        return errors + too_small(ctx.resolution, out, f"stride-{self.stride} {self.kernel_size}x{self.kernel_size} downsample")

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.out_dim is not None, "a downsample needs the stage's dim"
        return RepVGGMerging(ctx.dim, ctx.out_dim, kernel_size=self.kernel_size, small_kernel=self.small_kernel,
                             stride=self.stride)


@register("downsample", "repvgg_merging", config=RepVGGMergingConfig)
class RepVGGMerging(nn.Module):
    """y = repvgg_dw(x) (stride 2, C_in -> C_out, grouped per input channel); y + pw(bn(y)) (FFNet's PatchMerging with
    Conv2d_BN_skip, Yun et al. 2024). ``reparameterize()`` leaves one strided conv and one biased 1x1 conv (the BN and
    the skip folded into it)."""

    def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int = 7, small_kernel: int | None = 3,
                 stride: int = 2) -> None:
        super().__init__()
        self.dw = RepVGGDW(in_dim, out_dim=out_dim, stride=stride, kernel_size=kernel_size, small_kernel=small_kernel)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_dim)
        self.pw = nn.Conv2d(out_dim, out_dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H / 2, W / 2)
        y = self.dw(x)
        if self.bn is None:  # fused: the skip is inside pw
            return self.pw(y)
        return y + self.pw(self.bn(y))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """pw(bn(y)) + y = (W diag(s) + I) y + W t, with BN(y) = s * y + t per channel."""
        self.dw.reparameterize()
        if self.bn is None:
            return
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * scale
        weight = self.pw.weight[:, :, 0, 0]  # (C, C)
        fused = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=True).to(weight)
        fused.weight.copy_((weight * scale + torch.eye(weight.shape[0]).to(weight))[:, :, None, None])
        fused.bias.copy_(weight @ shift)  # type: ignore[union-attr]
        self.pw, self.bn = fused, None
