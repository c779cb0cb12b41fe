"""Prefix tokens: learned tokens put before a stage's map tokens (ViT's CLS token, Dosovitskiy et al. 2021; DeiT's
distillation token, Touvron et al. 2021; registers, Darcet et al. 2024), carried by a token stream (B, P + H*W, C).

A stage with ``prefix_tokens`` (or ``layout: tokens``) runs its blocks on the token stream: its map is flattened
after the downsample, the prefix tokens are put in front (cls, dist, then registers: timm's order), the stage's
position embedding is added, and every component either works on the stream (attention attends over the prefix,
norms and MLPs apply to it) or runs on the map alone while the prefix passes it unchanged (``TokenMode``). A
component on the stream whose ``forward`` takes ``hw`` is given the map's (H, W) too (CvT's convolutional projections
split the prefix off, convolve the map and put it back inside their attention).

Prefix tokens put in at a stage are carried by every later stage, to the head: a stage hands the next its map and
its prefix tokens, ``(map (B, C, H, W), prefix (B, P, C))``; the next stage's downsample pools the map and takes the
tokens across by its own rule (``token_mode() == "apply"``: its ``forward_prefix``, as PiT's pooling layer projects
them with a linear layer) or leaves them as they are, which the checks allow only where the width stays; then the
carried tokens go first, the stage's own after them (PiT, Heo et al. 2021: the class token crosses two poolings).
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from torch import Tensor, nn

Count = Annotated[int, Strict(), Field(ge=0, le=256)]


class PrefixTokensConfig(BaseModel):
    """How many of each prefix token a stage puts before its map tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cls: Annotated[int, Strict(), Field(ge=0, le=1)] = 0  # the class token (ViT), read by ``head: token``
    dist: Annotated[int, Strict(), Field(ge=0, le=1)] = 0  # DeiT's distillation token
    registers: Count = 0  # register tokens (Darcet et al. 2024), attended over and dropped at the head

    @model_validator(mode="after")
    def _puts_in_a_token(self) -> PrefixTokensConfig:
        if not self.cls + self.dist + self.registers:
            raise ValueError("prefix_tokens puts in no token (cls, dist and registers are all 0): give a count, or "
                             "leave prefix_tokens out")
        return self

    def names(self) -> tuple[str, ...]:
        """The prefix tokens in stream order: ("cls", "dist", "register", ...)."""
        return ("cls",) * self.cls + ("dist",) * self.dist + ("register",) * self.registers


class PrefixTokens(nn.Module):
    """Learned tokens put before the map's: (B, N, C) -> (B, P + N, C) (cls, dist, registers; timm's order)."""

    def __init__(self, dim: int, config: PrefixTokensConfig) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if config.cls else None
        self.dist = nn.Parameter(torch.zeros(1, 1, dim)) if config.dist else None
        self.registers = nn.Parameter(torch.zeros(1, config.registers, dim)) if config.registers else None
        for token in (self.cls, self.dist, self.registers):
            if token is not None:
                nn.init.normal_(token, std=1e-6)  # timm's ViT init of its class token
        self.count = config.cls + config.dist + config.registers

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C) -> (B, P + N, C)
        tokens: list[Tensor] = []
        for token in (self.cls, self.dist, self.registers):
            if token is not None:
                tokens.append(token.expand(x.shape[0], -1, -1))
        tokens.append(x)
        return torch.cat(tokens, dim=1)


def carried_prefixes(stages: list) -> list[tuple[str, ...]]:
    """The prefix tokens each stage takes in from the stages before it: tokens put in at a stage are carried on, by
    every later stage (each then a token stage), to the head (PiT's class token crosses its pooling layers)."""
    carried: tuple[str, ...] = ()
    taken = []
    for stage in stages:
        taken.append(carried)
        carried = carried + (stage.prefix() if stage is not None else ())
    return taken
