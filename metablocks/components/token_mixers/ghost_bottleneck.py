"""Ghost bottleneck: ghost module (expand, ReLU) -> depthwise kxk stride-s conv + BN (s > 1 only) -> squeeze-excite
-> ghost module (project, linear), the residual branch of GhostNet (Han et al., "GhostNet: More Features from Cheap
Operations", CVPR 2020) and GhostNetV2, whose expanding module carries the DFC attention gate (Tang et al.,
"GhostNetV2: Enhance Cheap Operation with Long-Range Attention", NeurIPS 2022).

As a token mixer it is a block's one branch, ``x = shortcut(x) + ghost_bottleneck(x)``, with ``norm: null`` and
``channel_mixer: null``; in a block that changes the width or strides it is built with ``in_dim`` and ``stride``, and
the block's ``shortcut`` (``dw_project``: depthwise kxk stride-s conv + BN, 1x1 conv + BN) matches it. ``hidden`` is the
expansion width as the paper's table gives it ("#exp"). Attribute names follow timm's (``ghost1``, ``conv_dw``/``bn_dw``,
``se``, ``ghost2``).
"""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.components.channel_mixers.squeeze_excite import Gate, SqueezeExcite
from metablocks.components.token_mixers.ghost_module import GhostModule, dfc_problems
from metablocks.fields import Kernel, Ratio, Width
from metablocks.registry import Component, Context, Ref, register


class GhostBottleneckConfig(Component):
    layout = "channels_first"
    hidden: Width = 16  # expansion width (the output of the first ghost module)
    kernel_size: Kernel = 3  # of the depthwise conv (only in a strided block)
    se_ratio: Ratio | None = None  # squeeze-excite on the hidden width: bottleneck make_divisible(hidden * ratio, 4)
    se_round_to: Width = 4
    se_gate: Gate = "hard_sigmoid"
    dfc: bool = True  # the first ghost module multiplies by the DFC gate (GhostNetV2; false: GhostNet V1's module)
    dfc_kernel: Kernel = 5
    act: Annotated[Component, Ref("act")] = "relu"
    norm: Annotated[Component, Ref("norm")] = "batchnorm"

    def se_hidden(self) -> int:
        from metablocks.blocks import make_divisible

        return make_divisible(self.hidden * self.se_ratio, self.se_round_to) if self.se_ratio is not None else 0

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(self.hidden)), (("act",), self.act, Context(self.hidden))]

    def check(self, ctx: Context) -> list[str]:
        errors = [f"{name}={value} must be odd to keep the map centred"
                  for name, value in (("kernel_size", self.kernel_size), ("dfc_kernel", self.dfc_kernel)) if value % 2 == 0]
        return errors + (dfc_problems(ctx.resolution) if self.dfc else [])


@register("token_mixer", "ghost_bottleneck", config=GhostBottleneckConfig)
class GhostBottleneck(nn.Module):
    """ghost1 (expand) -> [conv_dw -> bn_dw] -> [se] -> ghost2 (project): the Ghost bottleneck without its shortcut
    (Han et al. 2020; Tang et al. 2022). ``in_dim`` and ``stride``: the first block of a stage."""

    def __init__(self, dim: int, *, in_dim: int | None = None, stride: int = 1, hidden: int = 16, kernel_size: int = 3,
                 se_ratio: float | None = None, se_round_to: int = 4, se_gate: Gate = "hard_sigmoid", dfc: bool = True,
                 dfc_kernel: int = 5, act: Component, norm: Component) -> None:
        super().__init__()
        self.ghost1 = GhostModule(in_dim or dim, out_dim=hidden, act=act, norm=norm, dfc=dfc, dfc_kernel=dfc_kernel)
        if stride > 1:
            self.conv_dw = nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                                     groups=hidden, bias=False)
            self.bn_dw = norm.build(Context(hidden))
        else:
            self.conv_dw = self.bn_dw = None
        if se_ratio is not None:
            from metablocks.blocks import make_divisible

            self.se = SqueezeExcite(hidden, make_divisible(hidden * se_ratio, se_round_to), act=nn.ReLU(inplace=True),
                                    gate=se_gate)
        else:
            self.se = None
        self.ghost2 = GhostModule(hidden, out_dim=dim, act=None, norm=norm)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, ceil(H / s), ceil(W / s))
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        return self.ghost2(x)
