"""Token heads: classify from prefix tokens of a token stream (ViT's class token, Dosovitskiy et al. 2021; DeiT's
class and distillation tokens, logits averaged, Touvron et al. 2021) or from the mean of its map tokens."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from metablocks.fields import Probability
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register

Read = Literal["cls", "dist", "mean"]  # a prefix token by name, or the mean of the map's tokens


class TokenHeadConfig(Component):
    reads_tokens: ClassVar[bool] = True  # takes the last stage's token stream (B, P + H*W, C), not a map
    reads: list[Read] = Field(default=["cls"], min_length=1, max_length=4)  # each with its own classifier, averaged
    norm: Annotated[Component, Ref("norm")] | None = "layernorm"  # on each token read (timm's final norm)
    drop_rate: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        if ctx.layout != "tokens":
            return ["head token reads a token stream, but the last stage gives a map: give it prefix_tokens "
                    "(e.g. {cls: 1}), or use a pooling head (linear)"]
        missing = [t for t in self.reads if t != "mean" and t not in ctx.prefix]
        if missing:
            have = ", ".join(dict.fromkeys(ctx.prefix)) or "none"
            return [f"head token reads the {missing[0]} token, which the last stage does not carry (its prefix tokens: "
                    f"{have}); add it to the stage's prefix_tokens"]
        if len(set(self.reads)) != len(self.reads):
            return [f"head token reads {self.reads}: each token once"]
        return []

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim, layout="channels_last"))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        index = [ctx.prefix.index(t) if t != "mean" else -1 for t in self.reads]
        return TokenHead(ctx.dim, ctx.out_dim or 0, names=list(self.reads), index=index, prefix=len(ctx.prefix),
                         norm=self.norm, drop_rate=self.drop_rate)


class AveragedClassifiers(nn.Module):
    """One linear classifier per token read, logits averaged: (B, T, C) -> (B, classes) (DeiT: (head(cls) +
    head_dist(dist)) / 2, in eval and, as timm's default, in training)."""

    def __init__(self, dim: int, num_classes: int, names: list[str]) -> None:
        super().__init__()
        for name in names:
            self.add_module(name, nn.Linear(dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        logits = [fc(x[:, t]) for t, fc in enumerate(self.children())]
        return torch.stack(logits).mean(0)


@register("head", "token", config=TokenHeadConfig)
class TokenHead(nn.Module):
    """Read tokens (a prefix token, or the map tokens' mean), norm each, dropout, classify (averaging if several)."""

    def __init__(self, dim: int, num_classes: int, *, names: list[str], index: list[int], prefix: int,
                 norm: Component | None = "layernorm", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.dim, self.names, self.prefix = dim, names, prefix
        self.index = [i for i in index if i >= 0]
        self.mean = -1 in index
        self.norm = build_at(norm, dim, "vector") if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.pool = "token"
        self.fc = self.classifier(num_classes)

    def classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Linear(self.dim, num_classes) if len(self.names) == 1 else AveragedClassifiers(self.dim, num_classes,
                                                                                                self.names)

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """A fresh classifier; ``pool`` as timm's ``global_pool``: "token" reads the tokens named, "" none (forward
        gives the normalized stream (B, P + H*W, C), or a classifier's logits for every token)."""
        if pool not in (None, "token", ""):
            raise ValueError(f"global_pool={pool!r}: a token head reads {', '.join(self.names)}; allowed: 'token', ''")
        if pool == "" and num_classes > 0 and len(self.names) > 1:
            raise ValueError(f"global_pool='': the head averages {len(self.names)} classifiers, one per token it reads "
                             f"({', '.join(self.names)}); with no pooling there is one classifier, so num_classes=0")
        if pool is not None:
            self.pool = pool
        self.fc = self.classifier(num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, P + H*W, C)
        if self.pool == "":  # no pooling (timm's global_pool=''): every token, normalized
            if x.dim() == 4:  # a model pruned before its prefix tokens are put in gives a map: its tokens
                x = x.flatten(2).transpose(1, 2)
            x = self.drop(self.norm(x.flatten(0, 1)).unflatten(0, (x.shape[0], x.shape[1])))  # a vector norm per token
            return x if pre_logits else self.fc(x)
        read = [x[:, i] for i in self.index]
        if self.mean:
            read.insert(self.names.index("mean"), x[:, self.prefix:].mean(1))
        tokens = self.drop(self.norm(torch.stack(read, dim=1)))  # (B, T, C)
        if pre_logits or isinstance(self.fc, nn.Identity):
            return tokens.mean(1)
        return self.fc(tokens[:, 0]) if len(self.names) == 1 else self.fc(tokens)
