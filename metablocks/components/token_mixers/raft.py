"""Raft-token mixing, vertical then horizontal MLPs over channel rafts: RaftMLP (Tatsunami & Taki, "RaftMLP: How
Much Can Be Done Without Attention and with Less Spatial Locality?", ACCV 2022)."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from torch import Tensor, nn

from metablocks.fields import Probability, Ratio, Width, width_problems
from metablocks.registry import Component, Context, Ref, register
from metablocks.tracing import fx_tracing


class RaftConfig(Component):
    """``raft_size`` r channels (C/r apart, as in the official ``(chw co)`` split) are mixed jointly with the H rows
    of a column (an MLP on r*H features) and then with the W columns of a row (r*W features); ``expansion_factor``
    e is the official ``token_expansion_factor`` (hidden width e*r*H, e*r*W).

    ``axis`` picks the halves: ``both`` (default) is the serial raft-token-mixing block within one residual branch,
    ``y = v + horizontal(x + v)`` with ``v = vertical(x)``; ``vertical`` / ``horizontal`` give one half, so a recipe
    that cycles [vertical with no channel mixer, horizontal with the channel MLP] reproduces the official block's
    three residual branches (each with its own LayerNorm) exactly.
    """

    layout = "channels_last"
    fixed_resolution: ClassVar[bool] = True  # the MLPs are sized by H and W
    raft_size: Width = 2
    expansion_factor: Ratio = 2.0
    act: Annotated[Component, Ref("act")] = "gelu"
    drop: Probability = 0.0
    axis: Literal["both", "vertical", "horizontal"] = "both"

    def check(self, ctx: Context) -> list[str]:
        errors = []
        if ctx.resolution is None:
            errors.append("needs the map's resolution to size its vertical (H) and horizontal (W) MLPs; "
                          "give the block a resolution=(H, W) or the recipe an img_size")
        if ctx.dim % self.raft_size:
            errors.append(f"raft_size={self.raft_size} does not divide dim={ctx.dim}")
        if ctx.resolution is not None:
            errors += width_problems(self.expansion_factor, self.raft_size * min(ctx.resolution), "expansion_factor")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "raft mixing needs the map's resolution"
        return RaftTokenMixer(ctx.dim, resolution=ctx.resolution, raft_size=self.raft_size,
                              expansion_factor=self.expansion_factor, act=self.act, drop=self.drop, axis=self.axis)


class AxisMlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop on the last axis (one raft's features along one spatial axis)."""

    def __init__(self, features: int, hidden: int, act: Component, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act = act.build()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


@register("token_mixer", "raft", config=RaftConfig)
class RaftTokenMixer(nn.Module):
    """Vertical MLP over (raft, row) features of each column, then horizontal over (raft, column) of each row (RaftMLP)."""

    def __init__(self, dim: int, *, resolution: tuple[int, int], raft_size: int = 2, expansion_factor: float = 2.0,
                 act: Component, drop: float = 0.0, axis: Literal["both", "vertical", "horizontal"] = "both") -> None:
        super().__init__()
        self.resolution, self.raft_size = tuple(resolution), raft_size
        height, width = resolution
        self.vertical = (AxisMlp(raft_size * height, int(expansion_factor * raft_size * height), act, drop)
                         if axis in ("both", "vertical") else None)
        self.horizontal = (AxisMlp(raft_size * width, int(expansion_factor * raft_size * width), act, drop)
                           if axis in ("both", "horizontal") else None)

    # permutes/reshapes as einops' patterns in the comments (TorchScript and torch.fx take these)
    def _mix_vertical(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        cols = x.unflatten(3, (self.raft_size, -1)).permute(0, 4, 2, 3, 1).flatten(3)  # "b h w (r g) -> b g w (r h)"
        out = self.vertical(cols)  # type: ignore[misc]
        return out.unflatten(3, (self.raft_size, -1)).permute(0, 4, 2, 3, 1).flatten(3)  # "b g w (r h) -> b h w (r g)"

    def _mix_horizontal(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        rows = x.unflatten(3, (self.raft_size, -1)).permute(0, 4, 1, 3, 2).flatten(3)  # "b h w (r g) -> b g h (r w)"
        out = self.horizontal(rows)  # type: ignore[misc]
        return out.unflatten(3, (self.raft_size, -1)).permute(0, 2, 4, 3, 1).flatten(3)  # "b g h (r w) -> b h w (r g)"

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        if self.vertical is None:
            return self._mix_horizontal(x)
        v = self._mix_vertical(x)
        if self.horizontal is None:
            return v
        return v + self._mix_horizontal(x + v)

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        if (x.shape[1], x.shape[2]) != self.resolution:
            raise ValueError(f"raft mixing was built for a fixed {self.resolution[0]}x{self.resolution[1]} token grid; "
                             f"got a {x.shape[1]}x{x.shape[2]} map")
