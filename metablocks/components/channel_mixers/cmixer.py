"""SpaRTAN's wave channel mixer (Pay et al., "SpaRTAN: Spatial Reinforcement Token-based Aggregation Network for Visual
Recognition", IJCNN 2025; official code henry-pay/SpaRTAN ``src/model/spartan.py``, ``CMixer``).

    i = argmax_c x                                  (B, 1, H, W): the strongest input channel at each position
    t = GELU(theta(x)),  w = proj(x)                two 1x1 convs, C -> rC
    f = w * t + w[i] * t[i]                         the product at channel i (gathered) added to every channel
    f = f (*) c                                     channels (2k, 2k+1) read as one complex number, times a learned c_k
    y = proj_out(SE(conv-BN-GELU_3x3(f)))           grouped 3x3 over rC channels, squeeze-excite, 1x1 rC -> C

The argmax is taken over the C input channels and indexes the first C of the rC expanded channels (what the official
code does). It is a hard choice: the gradient flows through the gathered values ``w[i]``, ``t[i]`` (to theta and
proj), never through ``i`` (x receives no gradient through the choice). It is deterministic: ties go to the lowest
channel index, as ``torch.argmax`` documents. The complex product runs in float32 (the official code disables
autocast around it) and is written out in real arithmetic: (a + ib)(p + iq) = (ap - bq) + i(aq + bp).

The official network's 3x3 conv is depthwise in its first half (stages 1-2) and has C groups of r channels in its
second half (stages 3-4): ``group_width`` (1, resp. r) says which, per stage in the recipe. The official code asserts
r > 1; r = 1 runs too (the argmax then indexes every channel), so it is allowed here.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn

from metablocks.components.channel_mixers.squeeze_excite import SqueezeExcite
from metablocks.components.token_mixers.smixer import ConvNormAct, group_problems
from metablocks.fields import Kernel, Ratio, Width
from metablocks.registry import Component, Context, Ref, register


def complex_scale(feat: Tensor, weight: Tensor) -> Tensor:
    """(B, 2n, H, W) channels (2k, 2k+1) = (real, imaginary) parts times ``weight`` (n, 2) = (real, imaginary) c_k."""
    b, channels, h, w = feat.shape
    re, im = feat.float().reshape(b, channels // 2, 2, h, w).unbind(2)  # einops' "b (n two) h w -> two b n h w", views
    weight = weight.float()
    a, c = weight[:, 0, None, None], weight[:, 1, None, None]  # (n, 1, 1) each
    real, imag = torch.addcmul(a * re, c, im, value=-1.0), torch.addcmul(a * im, c, re)  # ap - bq, aq + bp
    return torch.stack([real, imag], dim=2).reshape(b, channels, h, w)  # "two b n h w -> b (n two) h w"


def argmax_gather(x: Tensor, maps: list[Tensor]) -> list[Tensor]:
    """Each of ``maps`` (B, *, H, W) at the channel where ``x`` (B, C, H, W) is largest: (B, 1, H, W) each."""
    index = x.argmax(dim=1, keepdim=True)
    return [m.gather(1, index) for m in maps]


class CMixerConfig(Component):
    layout = "channels_first"
    ratio: Width = 4  # expansion r of the two 1x1 convs (rC channels; the official code asserts r > 1)
    kernel_size: Kernel = 3
    group_width: Width = 1  # channels per group of the kxk conv over rC: 1 depthwise, r: C groups
    se_ratio: Ratio = 0.25  # squeeze-excite hidden width, a fraction of C (the input's, not rC)
    norm: Annotated[Component, Ref("norm")] = "batchnorm"  # after the kxk conv (SpaRTAN: eps 1e-6)
    act: Annotated[Component, Ref("act")] = "gelu"  # on theta(x) and after the kxk conv

    def check(self, ctx: Context) -> list[str]:
        hidden = self.ratio * ctx.dim
        errors = [] if hidden % 2 == 0 else [f"cmixer pairs its ratio x dim = {hidden} channels into complex numbers, "
                                             f"so that must be even (ratio={self.ratio}, dim={ctx.dim})"]
        errors += group_problems(hidden, self.group_width, "cmixer's conv (ratio x dim)")
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {self.kernel_size}")
        if int(ctx.dim * self.se_ratio) < 1:
            errors.append(f"se_ratio={self.se_ratio} leaves no squeeze-excite channels at dim={ctx.dim}")
        return errors

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        wide = Context(self.ratio * ctx.dim, resolution=ctx.resolution)
        return [(("norm",), self.norm, wide), (("act",), self.act, wide)]


@register("channel_mixer", "cmixer", config=CMixerConfig)
class CMixer(nn.Module):
    """Wave channel mixer: argmax-gathered gating of two 1x1 expansions, a complex per-pair weight, grouped kxk conv,
    SE, 1x1 back (SpaRTAN, Pay et al. 2025)."""

    def __init__(self, dim: int, *, ratio: int = 4, kernel_size: int = 3, group_width: int = 1, se_ratio: float = 0.25,
                 norm: Component, act: Component) -> None:
        super().__init__()
        hidden = ratio * dim
        self.theta = nn.Conv2d(dim, hidden, 1)
        self.act = act.build()
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.complex_weight = nn.Parameter(torch.randn(hidden // 2, 2))  # c_k = (real, imaginary), the official init
        self.conv = ConvNormAct(hidden, hidden, kernel_size, groups=hidden // group_width, norm=norm, act=act)
        self.se = SqueezeExcite(hidden, int(dim * se_ratio))
        self.proj_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        theta, weight = self.act(self.theta(x)), self.proj(x)  # (B, rC, H, W) each
        theta_max, weight_max = argmax_gather(x, [theta, weight])  # (B, 1, H, W) each
        feat = complex_scale(weight * theta + weight_max * theta_max, self.complex_weight).to(x.dtype)
        return self.proj_out(self.se(self.conv(feat)))
