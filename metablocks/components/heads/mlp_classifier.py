"""MLP classifier head: pool -> fc1 -> act -> norm -> drop -> fc (Yu et al., "InceptionNeXt: When Inception Meets ConvNeXt", CVPR 2024)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from torch import Tensor, nn

from metablocks.components.heads.classifier import checked_pool
from metablocks.fields import Probability, Ratio
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


class MlpClassifierHeadConfig(Component):
    pool: Literal["avg", "max", ""] = "avg"  # "": no global pool, the hidden layer and classifier at every position
    ratio: Ratio = 3.0  # hidden width = int(ratio * dim)
    act: Annotated[Component, Ref("act")] = "gelu"
    norm: Annotated[Component, Ref("norm")] | None = "layernorm"  # on the hidden vector, after the activation
    drop_rate: Probability = 0.0  # before the classifier, after the norm
    bias: bool = True

    def check(self, ctx: Context) -> list[str]:
        return [] if int(self.ratio * ctx.dim) >= 1 else [f"ratio={self.ratio} gives no hidden unit at dim={ctx.dim}"]

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(int(self.ratio * ctx.dim), layout="channels_last"))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim, **self.kwargs())


@register("head", "mlp_classifier", config=MlpClassifierHeadConfig)
class MlpClassifierHead(nn.Module):
    """Global pool, then a hidden layer (fc1 -> act -> norm) kept by reset(), then the classifier ``fc`` (InceptionNeXt, Yu et al. 2024).

    Unlike the ``mlp`` head (MetaFormer), the hidden layer belongs to the features: ``pre_logits`` returns the
    normalized hidden vector and ``reset`` replaces only ``fc``, as timm's MlpClassifierHead does.
    """

    def __init__(self, dim: int, num_classes: int, *, pool: str = "avg", ratio: float = 3.0, act: Component,
                 norm: Component | None, drop_rate: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.pool, self.use_bias = pool, bias
        self.num_features = self.hidden_size = int(ratio * dim)  # hidden_size: what pre_logits gives
        self.fc1 = nn.Linear(dim, self.num_features, bias=bias)
        self.act = act.build()
        self.norm = build_at(norm, self.num_features, "vector") if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: the hidden features out); the hidden layer is kept.
        ``pool`` sets the global pool ("avg", "max", or "": none)."""
        self.fc = nn.Linear(self.num_features, num_classes, bias=self.use_bias) if num_classes > 0 else nn.Identity()
        if pool is not None:
            self.pool = checked_pool(pool)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W)
        if self.pool == "":  # no global pool: every position through the hidden layer (and classifier)
            x = self.drop(self.norm(self.act(self.fc1(x.permute(0, 2, 3, 1)))))  # (B, H, W, hidden)
            return (x if pre_logits else self.fc(x)).permute(0, 3, 1, 2)
        x = x.mean((2, 3)) if self.pool == "avg" else x.amax((2, 3))  # (B, C)
        x = self.drop(self.norm(self.act(self.fc1(x))))  # (B, hidden)
        return x if pre_logits else self.fc(x)
