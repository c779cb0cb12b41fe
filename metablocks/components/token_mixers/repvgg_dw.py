"""RepVGG-style depthwise conv: a k x k depthwise conv-BN with a parallel smaller depthwise conv-BN, fused into one
conv for inference (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021; in this form the
depthwise RepVGGDW of FFNet, Yun et al., "FFNet: MetaMixer-based Efficient Convolutional Mixer Design", 2024, and of
LSNet, Wang et al., "LSNet: See Large, Focus Small", CVPR 2025)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.common.reparam import ConvBN, absorb_into_conv, fuse_conv_bn
from metablocks.fields import Kernel
from metablocks.registry import Component, Context, register


class RepVGGDWConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 7
    small_kernel: Kernel | None = 3  # the parallel conv-BN (FFNet: 7 -> 3, LSNet: 3 -> 1); null: one conv-BN only

    def check(self, ctx: Context) -> list[str]:
        errors = []
        k, s = self.kernel_size, self.small_kernel
        if k % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {k}")
        if s is not None and (s % 2 == 0 or s >= k):
            errors.append(f"small_kernel must be odd and smaller than kernel_size={k}, got {s}")
        if ctx.out_dim is not None and ctx.out_dim % ctx.dim:
            errors.append(f"a depthwise conv from {ctx.dim} to {ctx.out_dim} channels needs a multiple of {ctx.dim} "
                          f"channels out (each input channel gets out/in filters)")
        return errors


@register("token_mixer", "repvgg_dw", config=RepVGGDWConfig)
class RepVGGDW(nn.Module):
    """BN(dw k x k (x)) + BN1(dw s x s (x)), both grouped by input channel; ``reparameterize()`` leaves one conv.

    After each BN is folded into its conv the small kernel, zero-padded to k x k, adds onto the large one (RepVGG,
    Ding et al. 2021). ``out_dim`` (a multiple of ``dim``) and ``stride`` make it FFNet's downsampling form. Names as
    in the official code: ``conv`` (large) and ``conv1`` (small), each a conv-BN.
    """

    def __init__(self, dim: int, *, out_dim: int | None = None, stride: int = 1, kernel_size: int = 7,
                 small_kernel: int | None = 3) -> None:
        super().__init__()
        self.dim, self.out_dim, self.stride = dim, out_dim or dim, stride
        self.kernel_size, self.small_kernel = kernel_size, small_kernel
        self.conv: nn.Module = ConvBN(dim, self.out_dim, kernel_size, stride=stride, groups=dim)
        self.conv1: ConvBN | None = (ConvBN(dim, self.out_dim, small_kernel, stride=stride, groups=dim)
                                     if small_kernel is not None else None)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C_out, H / stride, W / stride)
        if self.conv1 is None:
            return self.conv(x)
        return self.conv(x) + self.conv1(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both BNs and the zero-padded small kernel into one biased conv ``self.conv`` (eval-mode equivalent)."""
        if isinstance(self.conv, nn.Conv2d):
            return
        weight, bias = fuse_conv_bn(self.conv.conv.weight, None, self.conv.bn)
        if self.conv1 is not None:
            small_weight, small_bias = fuse_conv_bn(self.conv1.conv.weight, None, self.conv1.bn)
            pad = (self.kernel_size - self.small_kernel) // 2  # type: ignore[operator]
            weight, bias = weight + F.pad(small_weight, (pad, pad, pad, pad)), bias + small_bias
        fused = nn.Conv2d(self.dim, self.out_dim, self.kernel_size, stride=self.stride, padding=self.kernel_size // 2,
                          groups=self.dim, bias=True).to(weight)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)  # type: ignore[union-attr]
        self.conv, self.conv1 = fused, None

    @torch.no_grad()
    def absorb_affine(self, scale: Tensor, shift: Tensor | None) -> None:
        """Fold a per-channel ``out * scale + shift`` that follows this conv into it (after fusing the branches)."""
        self.reparameterize()
        self.conv = absorb_into_conv(self.conv, scale, shift)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        fused = ", fused" if isinstance(self.conv, nn.Conv2d) else ""
        width = f", out_dim={self.out_dim}, stride={self.stride}" if self.out_dim != self.dim or self.stride > 1 else ""
        return f"dim={self.dim}{width}, kernel_size={self.kernel_size}, small_kernel={self.small_kernel}{fused}"
