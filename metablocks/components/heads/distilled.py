"""A classification head with a second, distillation classifier whose logits are averaged with the first's (Touvron et
al., "Training data-efficient image transformers & distillation through attention", ICML 2021, on pooled features as
in LeViT and LSNet, Wang et al., "LSNet: See Large, Focus Small", CVPR 2025)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any, Literal

from torch import Tensor, nn

from metablocks.components.heads.classifier import PoolHead
from metablocks.fields import Probability
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class DistilledHeadConfig(Component):
    pool: Literal["avg", "max", ""] = "avg"
    norm: Annotated[Component, Ref("norm")] | None = None  # each classifier's own norm on the pooled vector (LSNet: BN)
    drop_rate: Probability = 0.0

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim, layout="channels_last"))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim, **self.kwargs())


class DistilledClassifier(nn.Module):
    """(cls(x) + dist(x)) / 2, each a norm -> linear on the pooled features (``cls`` is trained on the labels, ``dist``
    on a teacher's; at inference both are averaged, as the official LSNet in eval and timm's distilled models do)."""

    def __init__(self, dim: int, num_classes: int, norm: Component | None) -> None:
        super().__init__()
        for name in ("cls", "dist"):
            self.add_module(name, nn.Sequential(OrderedDict(
                norm=build_at(norm, dim, "vector") if norm else nn.Identity(), linear=nn.Linear(dim, num_classes))))

    def forward(self, x: Tensor) -> Tensor:  # (B, C) or (B, H, W, C)
        return (self.cls(x) + self.dist(x)) / 2


@register("head", "distilled", config=DistilledHeadConfig)
class DistilledHead(PoolHead):
    """Global pool, then two classifiers (each with its own norm) whose logits are averaged (DeiT's distillation head,
    Touvron et al. 2021). ``forward`` always returns the average; a distillation loss reads ``fc.cls`` and
    ``fc.dist`` on ``forward_head(x, pre_logits=True)``."""

    def __init__(self, dim: int, num_classes: int, *, pool: str = "avg", norm: Component | None = None,
                 drop_rate: float = 0.0) -> None:
        self.classifier_norm = norm
        super().__init__(dim, num_classes, pool=pool, norm=None, drop_rate=drop_rate)

    def classifier(self, num_classes: int) -> nn.Module:
        return DistilledClassifier(self.dim, num_classes, self.classifier_norm) if num_classes > 0 else nn.Identity()
