"""Convolutional GLU channel mixer: TransNeXt (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision
Transformers", CVPR 2024)."""
from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from metablocks.fields import Kernel, Probability, Ratio
from metablocks.registry import Component, Context, Ref, register


class ConvGluConfig(Component):
    """Hidden width h = int(2 * int(ratio * dim) / 3), as the official ``ConvolutionalGLU`` (2/3 keeps the params of an
    MLP of the same ratio).

    Channels-last: fc1/fc2 are Linear layers on (B, H, W, C) and the depthwise conv runs on a permuted view (no
    explicit copy) that PyTorch convolves in channels-last memory format. On 2 CPU cores, (8, 128, 28, 28), ratio 4,
    this took 76 ms forward / 281 ms forward+backward against 119 / 395 ms for a channels-first version with 1x1
    convs; it also matches the layout of the attention mixers it follows in TransNeXt.
    """

    layout = "channels_last"
    ratio: Ratio = 4.0
    kernel_size: Kernel = 3
    act: Annotated[Component, Ref("act")] = "gelu"
    bias: bool = True
    drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if self.kernel_size % 2 == 0:
            errors.append(f"kernel_size must be odd to keep the map size, got {self.kernel_size}")
        if int(2 * int(self.ratio * ctx.dim) / 3) < 1:
            errors.append(f"ratio={self.ratio} of dim={ctx.dim} leaves no hidden units")
        return errors


@register("channel_mixer", "convglu", config=ConvGluConfig)
class ConvGlu(nn.Module):
    """fc1 -> split (x, v) -> act(dwconv(x)) * v -> fc2: a GLU gated by nearest-neighbour features (TransNeXt, Shi 2024).

    Names follow the official code (``fc1``, ``dwconv``, ``act``, ``fc2``); its ``dwconv.dwconv`` is our ``dwconv``.
    """

    def __init__(self, dim: int, *, ratio: float = 4.0, kernel_size: int = 3, act: Component, bias: bool = True,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(2 * int(ratio * dim) / 3)
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=True)
        self.act = act.build()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        x, v = self.fc1(x).chunk(2, dim=-1)  # (B, H, W, hidden) each
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # permuted views, channels-last memory
        return self.drop2(self.fc2(self.drop1(self.act(x) * v)))
