"""RepLK token mixer: 1x1 conv -> large depthwise conv with a small re-parameterized kernel -> 1x1 conv
(Ding et al., "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs", CVPR 2022)."""
from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from metablocks.components.common.reparam import ConvBN
from metablocks.components.token_mixers.dwconv import MAX_KERNEL, DWConv
from metablocks.fields import Kernel, Ratio
from metablocks.registry import Component, Context, Ref, register


class RepLKConfig(Component):
    layout = "channels_first"
    kernel_size: Kernel = 31
    small_kernel: Kernel = 5  # parallel small depthwise conv-BN, merged into the large kernel by reparameterize()
    dw_ratio: Ratio = 1.0  # depthwise channels = int(dw_ratio * dim)
    act: Annotated[Component, Ref("act")] = "relu"  # after the first 1x1 conv and after the large kernel

    def check(self, ctx: Context) -> list[str]:
        errors = []
        k = self.kernel_size
        if k % 2 == 0 or not 3 <= k <= MAX_KERNEL:
            errors.append(f"kernel_size must be odd and between 3 and {MAX_KERNEL}, got {k}")
        if self.small_kernel % 2 == 0 or not 1 <= self.small_kernel < k:
            errors.append(f"small_kernel must be odd and smaller than kernel_size={k}, got {self.small_kernel}")
        if int(self.dw_ratio * ctx.dim) < 1:
            errors.append(f"dw_ratio={self.dw_ratio} leaves no depthwise channels at dim={ctx.dim}")
        return errors


@register("token_mixer", "replk", config=RepLKConfig)
class RepLK(nn.Module):
    """pw1 (1x1 conv-BN) -> act -> depthwise k x k (+ small k, BN each) -> act -> pw2 (1x1 conv-BN) (RepLKNet, Ding et al. 2022).

    The block supplies RepLKNet's pre-BN and the residual; ``reparameterize()`` leaves three biased convs.
    """

    def __init__(self, dim: int, *, kernel_size: int = 31, small_kernel: int = 5, dw_ratio: float = 1.0,
                 act: Component) -> None:
        super().__init__()
        dw_dim = int(dw_ratio * dim)
        self.pw1 = ConvBN(dim, dw_dim)
        self.act1 = act.build()
        self.large_kernel = DWConv(dw_dim, kernel_size=kernel_size, small_kernel=small_kernel)
        self.lk_act = act.build()
        self.pw2 = ConvBN(dw_dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.pw2(self.lk_act(self.large_kernel(self.act1(self.pw1(x)))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        for module in (self.pw1, self.large_kernel, self.pw2):
            module.reparameterize()
