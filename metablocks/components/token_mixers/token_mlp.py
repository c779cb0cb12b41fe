"""Token-mixing MLP across all H*W tokens, per channel: MLP-Mixer (Tolstikhin et al., "MLP-Mixer: An all-MLP
Architecture for Vision", NeurIPS 2021)."""
from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from torch import Tensor, nn

from metablocks.fields import Probability, Ratio, Width
from metablocks.registry import Component, Context, Ref, register
from metablocks.tracing import fx_tracing


class TokenMlpConfig(Component):
    """Hidden width ``hidden_dim`` if given, else ``int(ratio * C)`` of the CHANNEL width C, as timm's MixerBlock
    (``tokens_dim = int(mlp_ratio[0] * dim)``, mlp_ratio[0] = 0.5: 384 hidden for Mixer-B/16's 768 channels)."""

    layout = "channels_last"
    fixed_resolution: ClassVar[bool] = True  # fc1/fc2 are sized by N = H*W
    ratio: Ratio = 0.5
    hidden_dim: Width | None = None
    act: Annotated[Component, Ref("act")] = "gelu"
    bias: bool = True
    drop: Probability = 0.0

    def hidden(self, dim: int) -> int:
        return self.hidden_dim if self.hidden_dim is not None else int(self.ratio * dim)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.resolution is None:
            errors.append("needs the map's resolution to size its token MLP (N = H*W tokens); "
                          "give the block a resolution=(H, W) or the recipe an img_size")
        if self.hidden(ctx.dim) < 1:
            errors.append(f"ratio={self.ratio} of dim={ctx.dim} leaves no hidden units; raise ratio or set hidden_dim")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "a token MLP needs the map's resolution"
        return TokenMlp(ctx.dim, resolution=ctx.resolution, hidden_dim=self.hidden(ctx.dim), act=self.act,
                        bias=self.bias, drop=self.drop)


@register("token_mixer", "token_mlp", config=TokenMlpConfig)
class TokenMlp(nn.Module):
    """fc1 (N -> hidden) -> act -> fc2 (hidden -> N) along the token axis, weights shared by all channels (MLP-Mixer).

    Names follow timm's ``Mlp`` so ``blocks.i.mlp_tokens.fc1`` maps to ``token_mixer.fc1``.
    """

    def __init__(self, dim: int, *, resolution: tuple[int, int], hidden_dim: int, act: Component, bias: bool = True,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        num_tokens = resolution[0] * resolution[1]
        self.fc1 = nn.Linear(num_tokens, hidden_dim, bias=bias)
        self.act = act.build()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, num_tokens, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        # permute/reshape as einops' "b h w c -> b c (h w)" and back (TorchScript and torch.fx take these)
        tokens = x.permute(0, 3, 1, 2).flatten(2)  # (B, C, N): the Linear layers act on the token axis
        tokens = self.drop2(self.fc2(self.drop1(self.act(self.fc1(tokens)))))
        return tokens.reshape(x.shape[0], x.shape[3], x.shape[1], x.shape[2]).permute(0, 2, 3, 1)  # (B, H, W, C)

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        if (x.shape[1], x.shape[2]) != self.resolution:
            raise ValueError(f"the token MLP was built for a fixed {self.resolution[0]}x{self.resolution[1]} token grid; "
                             f"got a {x.shape[1]}x{x.shape[2]} map")
