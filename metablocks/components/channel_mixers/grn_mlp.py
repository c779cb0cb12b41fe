"""MLP with a norm on its hidden layer (GRN by default), optionally squeeze-excited before and normalized after:
ConvNeXt V2's FFN (Woo et al., "ConvNeXt V2", CVPR 2023) and UniRepLKNet's SE + FFN + BN (Ding et al.,
"UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series and Image
Recognition", CVPR 2024)."""
from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn

from metablocks.components.norms.grn import GRN
from metablocks.components.common.reparam import absorb_into_conv, fuse_conv_bn
from metablocks.components.channel_mixers.squeeze_excite import SqueezeExcite
from metablocks.fields import Ratio
from metablocks.registry import Component, Context, Ref, register


class GrnMlpConfig(Component):
    layout = "channels_first"
    ratio: Ratio = 4.0
    act: Annotated[Component, Ref("act")] = "gelu"
    hidden_norm: Annotated[Component, Ref("norm")] | None = "grn"  # on the hidden layer, after the activation
    bias: bool = True  # fc1's bias
    out_bias: bool = True  # fc2's bias (UniRepLKNet: false, a BatchNorm follows)
    out_norm: Annotated[Component, Ref("norm")] | None = None  # after fc2 (UniRepLKNet: batchnorm)
    se_ratio: Ratio | None = None  # squeeze-excite the input first, hidden = int(se_ratio * dim)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        found = []
        if self.hidden_norm is not None:
            found.append((("hidden_norm",), self.hidden_norm, Context(max(int(self.ratio * ctx.dim), 1))))
        if self.out_norm is not None:
            found.append((("out_norm",), self.out_norm, Context(ctx.dim)))
        return found

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if int(self.ratio * ctx.dim) < 1:
            errors.append(f"ratio={self.ratio} leaves no hidden channels at dim={ctx.dim}")
        if self.se_ratio is not None and int(self.se_ratio * ctx.dim) < 1:
            errors.append(f"se_ratio={self.se_ratio} leaves no squeeze channels at dim={ctx.dim}")
        return errors


@register("channel_mixer", "grn_mlp", config=GrnMlpConfig)
class GrnMlp(nn.Module):
    """[SE ->] fc1 -> act -> hidden_norm (GRN) -> fc2 [-> out_norm], pointwise convs on (B, C, H, W).

    ``reparameterize()`` folds GRN's beta and a BatchNorm ``out_norm`` into fc2 (UniRepLKNet's deploy form).
    """

    def __init__(self, dim: int, *, ratio: float = 4.0, act: Component, hidden_norm: Component | None,
                 bias: bool = True, out_bias: bool = True, out_norm: Component | None = None,
                 se_ratio: float | None = None) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        self.se = SqueezeExcite(dim, int(se_ratio * dim)) if se_ratio is not None else nn.Identity()
        self.fc1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.act = act.build()
        self.norm = hidden_norm.build(Context(hidden, layout="channels_first")) if hidden_norm else nn.Identity()
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=out_bias)
        self.out_norm = out_norm.build(Context(dim, layout="channels_first")) if out_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.out_norm(self.fc2(self.norm(self.act(self.fc1(self.se(x))))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """fc2(h + beta) = fc2(h) + W beta, and BN after fc2 scales and shifts it: one biased fc2, same output (eval)."""
        weight, bias = self.fc2.weight, self.fc2.bias
        folded = False
        if isinstance(self.norm, GRN) and self.norm.beta is not None:
            projected = weight[:, :, 0, 0] @ self.norm.beta  # (C,)
            bias = projected if bias is None else bias + projected
            self.norm.beta = None
            folded = True
        if isinstance(self.out_norm, nn.BatchNorm2d):
            weight, bias = fuse_conv_bn(weight, bias, self.out_norm)
            self.out_norm = nn.Identity()
            folded = True
        if folded:
            fc2 = nn.Conv2d(self.fc2.in_channels, self.fc2.out_channels, 1).to(weight)
            fc2.weight.copy_(weight)
            fc2.bias.copy_(bias)  # type: ignore[union-attr, arg-type]
            self.fc2 = fc2

    @torch.no_grad()
    def absorb_affine(self, scale: Tensor, shift: Tensor | None) -> None:
        """Fold a per-channel ``out * scale + shift`` that follows this mixer (a layer scale) into fc2."""
        self.reparameterize()
        if not isinstance(self.out_norm, nn.Identity):
            raise ValueError(f"cannot fold into fc2 through {type(self.out_norm).__name__}; only a BatchNorm out_norm folds")
        self.fc2 = absorb_into_conv(self.fc2, scale, shift)
