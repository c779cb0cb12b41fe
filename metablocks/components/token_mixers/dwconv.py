"""Depthwise k x k convolution token mixer, 3x3 to 31x31: ConvNeXt's 7x7 (Liu et al., "A ConvNet for the 2020s",
CVPR 2022) up to RepLKNet's re-parameterized large kernels (Ding et al., "Scaling Up Your Kernels to 31x31",
CVPR 2022)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.fields import Kernel
from metablocks.registry import Component, Context, register

MAX_KERNEL = 31


class DWConvConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 7
    bias: bool = True  # the plain conv's bias; with small_kernel each branch's BatchNorm supplies the shift
    small_kernel: Kernel | None = None  # a parallel small depthwise conv+BN branch, fused away by reparameterize()

    def check(self, ctx: Context) -> list[str]:
        errors = []
        k = self.kernel_size
        if k % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {k}")
        if not 3 <= k <= MAX_KERNEL:
            errors.append(f"kernel_size must be between 3 and {MAX_KERNEL}, got {k}")
        if self.small_kernel is not None:
            s = self.small_kernel
            if s % 2 == 0:
                errors.append(f"small_kernel must be odd to keep the map size, got {s}")
            if not 1 <= s < k:
                errors.append(f"small_kernel must be smaller than kernel_size={k}, got {s}")
            if "bias" in self.model_fields_set:
                errors.append("bias has no effect with small_kernel: each branch's BatchNorm supplies the shift")
        return errors


def _depthwise(dim: int, kernel_size: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)


def _conv_bn(dim: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=_depthwise(dim, kernel_size, bias=False), bn=nn.BatchNorm2d(dim)))


def _fuse_bn(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one conv equal to conv -> BN(eval): w * gamma / std, beta - mean * gamma / std."""
    conv, bn = branch.conv, branch.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


@register("token_mixer", "dwconv", config=DWConvConfig)
class DWConv(nn.Module):
    """Depthwise k x k conv; with ``small_kernel``, RepLKNet's large conv-BN plus a parallel small conv-BN branch.

    ``reparameterize()`` folds both BatchNorms and the zero-padded small kernel into a single conv (``self.conv``)
    that computes the same function in eval mode (Ding et al. 2022).
    """

    def __init__(self, dim: int, *, kernel_size: int = 7, bias: bool = True, small_kernel: int | None = None) -> None:
        super().__init__()
        self.dim, self.kernel_size, self.small_kernel = dim, kernel_size, small_kernel
        if small_kernel is None:
            self.conv: nn.Conv2d | None = _depthwise(dim, kernel_size, bias)
        else:
            self.conv = None
            self.large = _conv_bn(dim, kernel_size)
            self.small = _conv_bn(dim, small_kernel)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if self.conv is not None:
            return self.conv(x)
        return self.large(x) + self.small(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse the two conv-BN branches into one biased conv (eval-mode equivalent); a no-op without them."""
        if self.conv is not None:
            return
        weight, bias = _fuse_bn(self.large)
        small_weight, small_bias = _fuse_bn(self.small)
        pad = (self.kernel_size - self.small_kernel) // 2  # type: ignore[operator]
        weight = weight + F.pad(small_weight, (pad, pad, pad, pad))
        conv = _depthwise(self.dim, self.kernel_size, bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias + small_bias)  # type: ignore[union-attr]
        del self.large, self.small
        self.conv = conv

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, small_kernel={self.small_kernel}"
