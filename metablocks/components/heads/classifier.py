"""Classification heads (kind ``head``): (B, C, H, W) -> global pool -> norm -> dropout -> classifier."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from torch import Tensor, nn

from metablocks.fields import Probability, Ratio
from metablocks.layout import build_at
from metablocks.registry import Component, Context, Ref, register


POOLS = ("avg", "max", "")


def checked_pool(pool: str) -> str:
    """``pool`` if it is a global pool a head can run (timm's ``global_pool``), else a ValueError saying which are."""
    if pool not in POOLS:
        raise ValueError(f"global_pool={pool!r} is not supported; allowed: 'avg', 'max', '' (no pooling)")
    return pool


class PoolHead(nn.Module):
    """Global pool -> norm -> dropout -> ``fc``; subclasses say what ``fc`` is."""

    def __init__(self, dim: int, num_classes: int, *, pool: str = "avg", norm: Component | None = None,
                 norm_first: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.dim, self.pool, self.norm_first = dim, pool, norm_first
        # before pooling on the (B, C, H, W) map, or after it on the (B, C) vector
        self.norm = build_at(norm, dim, "channels_first" if norm_first else "vector") if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = self.classifier(num_classes)

    def classifier(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: pooled features out); ``pool`` sets the
        global pool ("avg", "max", or "": none, the rest of the head then runs at every position)."""
        self.fc = self.classifier(num_classes) if num_classes > 0 else nn.Identity()
        if pool is not None:
            self.pool = checked_pool(pool)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.norm_first:  # normalize the map, then pool (ViT, MLP-Mixer, Swin)
            x = self.norm(x)
        if self.pool == "":  # no global pool: (B, C, H, W) in and out, norm and classifier at every position
            x = x.permute(0, 2, 3, 1)
            if not self.norm_first:
                x = self.norm(x)
            x = self.drop(x)
            return (x if pre_logits else self.fc(x)).permute(0, 3, 1, 2)
        x = x.mean((2, 3)) if self.pool == "avg" else x.amax((2, 3))  # (B, C)
        if not self.norm_first:  # pool, then normalize (MetaFormer)
            x = self.norm(x)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class LinearHeadConfig(Component):
    pool: Literal["avg", "max", ""] = "avg"  # "": no global pool (timm's global_pool=''), logits at every position
    norm: Annotated[Component, Ref("norm")] | None = None
    norm_first: bool = False  # normalize the (B, C, H, W) map before pooling instead of the pooled vector
    drop_rate: Probability = 0.0

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("norm",), self.norm, Context(ctx.dim, layout="channels_last"))] if self.norm else []

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim, **self.kwargs())


@register("head", "linear", config=LinearHeadConfig)
class LinearHead(PoolHead):
    """Global pool, norm and a linear classifier (the standard ImageNet head)."""

    def classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()


class MlpClassifier(nn.Module):
    """fc1 -> act -> norm -> fc2, the two-layer classifier of MetaFormer's MLP head."""

    def __init__(self, dim: int, hidden: int, num_classes: int, *, act: Component, norm: Component | None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act.build(Context(hidden))
        self.norm = build_at(norm, hidden, "vector") if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class MlpHeadConfig(LinearHeadConfig):
    ratio: Ratio = 4.0
    act: Annotated[Component, Ref("act")] = "squared_relu"
    hidden_norm: Annotated[Component, Ref("norm")] | None = "layernorm"

    def check(self, ctx: Context) -> list[str]:
        return [] if int(self.ratio * ctx.dim) >= 1 else [f"ratio={self.ratio} gives no hidden unit at dim={ctx.dim}"]

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        found = super().nested(ctx)
        if self.hidden_norm is not None:
            found.append((("hidden_norm",), self.hidden_norm, Context(int(self.ratio * ctx.dim), layout="channels_last")))
        return found


@register("head", "mlp", config=MlpHeadConfig)
class MlpHead(PoolHead):
    """Global pool, norm and a two-layer MLP classifier (Yu et al., "MetaFormer Baselines for Vision", 2022)."""

    def __init__(self, dim: int, num_classes: int, *, ratio: float = 4.0, act: Component, hidden_norm: Component | None,
                 **kwargs) -> None:
        self.hidden, self.act, self.hidden_norm = int(ratio * dim), act, hidden_norm
        super().__init__(dim, num_classes, **kwargs)

    def classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return MlpClassifier(self.dim, self.hidden, num_classes, act=self.act, norm=self.hidden_norm)
