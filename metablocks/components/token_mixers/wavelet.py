"""Wavelet token mixer: WaveMix (Jeevan & Sethi, "WaveMix: A Resource-efficient Neural Network for Image Analysis",
arXiv 2203.03689, 2022/2023).

One WaveMix block, as the official ``Level{L}Waveblock`` of the ``wavemix`` package:

    z = reduction(x)                                    # 1x1 conv, C -> C/4
    for j = 1..L:  ll_j, (lh_j, hl_j, hh_j) = haar(ll_{j-1})   (ll_0 = z)
                   bands_j = [ll_j | lh, hl, hh of every channel]   # (B, C, H/2^j, W/2^j)
    y_L = feedforward_L(bands_L)                        # coarsest level first
    y_j = feedforward_j([bands_j | y_{j+1}])            # then finer levels take the coarser result
    out = y_1                                           # (B, C, H, W)

each ``feedforward_j`` being 1x1 conv (-> C*mult) -> GELU -> dropout -> 1x1 conv (-> ff_channel) ->
4x4 stride-2 transposed conv (x2 upsampling) -> BatchNorm. The shortcut ``x + out`` is our block's residual, so
a WaveMix recipe leaves the block's norm and channel mixer empty (``norm: null, channel_mixer: null``).
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, Strict
from torch import Tensor, nn

from metablocks.fields import MAX_RATIO, Levels, Probability, Width
from metablocks.registry import Component, Context, Ref, register
from metablocks.tracing import fx_tracing


def haar_dwt2d(x: Tensor) -> tuple[Tensor, Tensor]:
    """One level of the orthonormal 2-D Haar DWT of (B, C, H, W), H and W even: ``(yl, yh)``.

    Same convention and values as ``pytorch_wavelets.DWTForward(J=1, wave="haar", mode="zero")`` (which the official
    WaveMix code vendors): ``yl`` (B, C, H/2, W/2) is LL, ``yh`` (B, C, 3, H/2, W/2) holds LH, HL, HH (pywt's cH, cV,
    cD). For each 2x2 block [[p, q], [r, s]] (rows along H):

        LL = (p + q + r + s) / 2     LH = (p + q - r - s) / 2  (high-pass along H, low-pass along W)
        HL = (p - q + r - s) / 2     HH = (p - q - r + s) / 2

    i.e. the separable filters low = [1, 1]/sqrt(2), high = [1, -1]/sqrt(2); the transform is orthonormal
    (it preserves the sum of squares) and differentiable like any tensor arithmetic.
    """
    # einops' "b c (h i) (w j) -> i j b c h w", as views (TorchScript and torch.fx take these)
    quads = x.unflatten(2, (-1, 2)).unflatten(4, (-1, 2)).permute(3, 5, 0, 1, 2, 4)
    p, q, r, s = quads[0, 0], quads[0, 1], quads[1, 0], quads[1, 1]  # each (B, C, H/2, W/2)
    top, bottom, left, right = p + q, r + s, p - q, r - s
    ll = (top + bottom) / 2
    highs = torch.stack([(top - bottom) / 2, (left + right) / 2, (left - right) / 2], dim=2)  # (B, C, 3, H/2, W/2)
    return ll, highs


def haar_subbands(x: Tensor, levels: int) -> list[Tensor]:
    """The ``levels``-level Haar pyramid of (B, C, H, W), level j as (B, 4C, H/2^j, W/2^j) in WaveMix's channel order.

    Level j is ``cat([LL_j, LH/HL/HH_j of channel 0, of channel 1, ...])``: the official code's
    ``torch.cat((Yl, Yh[j].reshape(b, 3C, h, w)), 1)``, with LL_j computed from LL_{j-1} (pytorch_wavelets' J-level
    DWTForward).
    """
    bands, ll = [], x
    for _ in range(levels):
        ll, highs = haar_dwt2d(ll)
        bands.append(torch.cat([ll, highs.flatten(1, 2)], dim=1))  # (B, 4C, h, w)
    return bands


class WaveletConfig(Component):
    layout = "channels_first"
    levels: Levels = 1  # DWT levels (the official Level1Waveblock ... Level4Waveblock)
    mult: Annotated[int, Strict(), Field(ge=1, le=int(MAX_RATIO))] = 2  # expansion of each level's first 1x1 conv: C -> C*mult
    ff_channel: Width | None = None  # channels of each level's second 1x1 conv; None: dim (as WaveMix recipes)
    dropout: Probability = 0.0  # after the GELU of each level (the official default is 0.5)
    act: Annotated[Component, Ref("act")] = "gelu"

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.dim % 4:
            errors.append(f"dim={ctx.dim} must be divisible by 4: the 1x1 reduction to dim/4 channels and its 4 Haar "
                          f"sub-bands must give dim channels back")
        step = 2 ** self.levels
        if ctx.resolution and (ctx.resolution[0] % step or ctx.resolution[1] % step):
            errors.append(f"levels={self.levels} halves the map {self.levels} time(s), so H and W must be divisible by "
                          f"{step}; got a {ctx.resolution[0]}x{ctx.resolution[1]} map")
        return errors


@register("token_mixer", "wavelet", config=WaveletConfig)
class WaveMixer(nn.Module):
    """1x1 reduction -> multi-level 2-D Haar DWT -> per-level MLP + x2 transposed conv + BN, coarse to fine (WaveMix, Jeevan & Sethi 2022).

    Attribute names follow the official ``Level{L}Waveblock`` so official weights load under a prefix mapping:
    ``reduction``, and ``feedforward`` (levels=1) or ``feedforward1`` ... ``feedforward{L}`` (levels>1), each a
    Sequential indexed 0 conv, 1 act, 2 dropout, 3 conv, 4 transposed conv, 5 BatchNorm.
    """

    def __init__(self, dim: int, *, levels: int = 1, mult: int = 2, ff_channel: int | None = None, dropout: float = 0.0,
                 act: Component) -> None:
        super().__init__()
        assert dim % 4 == 0, f"WaveMix needs dim divisible by 4, got {dim}"
        self.levels = levels
        ff_channel = ff_channel or dim
        self.reduction = nn.Conv2d(dim, dim // 4, 1)
        names = []
        for j in range(1, levels + 1):
            in_ch = dim if j == levels else dim + dim // 2  # finer levels also take the coarser level's output
            out_ch = dim if j == 1 else dim // 2
            name = "feedforward" if levels == 1 else f"feedforward{j}"
            self.add_module(name, nn.Sequential(
                nn.Conv2d(in_ch, dim * mult, 1),
                act.build(),
                nn.Dropout(dropout),
                nn.Conv2d(dim * mult, ff_channel, 1),
                nn.ConvTranspose2d(ff_channel, out_ch, 4, stride=2, padding=1),  # (h, w) -> (2h, 2w)
                nn.BatchNorm2d(out_ch),
            ))
            names.append(name)
        self._names = tuple(names)

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the plan of named submodules unrolled (metablocks/tracing.py): same submodules, same names."""
        from metablocks.tracing import unrolled

        return unrolled(self)

    @torch.jit.unused
    def _check_size(self, h: int, w: int) -> None:
        step = 2 ** self.levels
        if h % step or w % step:
            raise ValueError(f"wavelet mixer: levels={self.levels} halves the map {self.levels} time(s), so its sides "
                             f"must be multiples of {step}; this input gives a {h}x{w} map")

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_size(x.shape[2], x.shape[3])
        bands = haar_subbands(self.reduction(x), self.levels)  # level j: (B, C, H/2^j, W/2^j)
        y = None
        for name, band in zip(reversed(self._names), reversed(bands)):
            y = self._modules[name](band if y is None else torch.cat([band, y], dim=1))
        return y  # (B, C, H, W)
