"""A token-labelling head: the pooled classifier plus a weighted max over a second classifier applied to every token
(Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision Transformers", NeurIPS 2021; GLNet's
``*_tklb`` models, Zhu et al., NeurIPS 2024)."""
from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor, nn

from metablocks.fields import Probability, Scale
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class TokenLabelHeadConfig(Component):
    norm: Annotated[Component, Ref("norm")] | None = None  # on the (B, C, H, W) map, before both classifiers
    aux_weight: Scale = 0.5  # logits = fc(mean of the tokens) + aux_weight * max over the tokens of aux(token)
    drop_rate: Probability = 0.0  # before the pooled classifier

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim, layout="channels_first"))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim, **self.kwargs())


@register("head", "token_label", config=TokenLabelHeadConfig)
class TokenLabelHead(nn.Module):
    """norm -> fc(mean) + aux_weight * max_n aux(token_n), the inference output of a token-labelling model (training
    reads ``aux`` on every token itself). ``pre_logits`` gives the pooled features, without the token branch."""

    def __init__(self, dim: int, num_classes: int, *, norm: Component | None = None, aux_weight: float = 0.5,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.dim, self.aux_weight = dim, aux_weight
        self.norm = build_at(norm, dim, "channels_first") if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """Fresh classifiers (both) for ``num_classes`` (0: the pooled features out); the pool is always the mean."""
        if pool not in (None, "avg"):
            raise ValueError(f"global_pool={pool!r}: the token_label head averages the tokens for its pooled "
                             f"classifier and takes the max of its token classifier; only 'avg' is supported")
        self.fc = nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux = nn.Linear(self.dim, num_classes) if num_classes > 0 else None

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        pooled = self.drop(tokens.mean(1))
        if pre_logits or self.aux is None:
            return pooled
        return self.fc(pooled) + self.aux_weight * self.aux(tokens).amax(1)
