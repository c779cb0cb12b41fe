"""Re-identification embedding head: global pool -> fc -> BatchNorm1d -> ReLU (the embedding) -> classifier over the
training identities (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019; torchreid's
``OSNet.fc`` + ``classifier``).

The official model returns the logits in training and the embedding in evaluation (re-ID ranks by feature distance).
Here the head returns logits in both modes, as every metablocks head (so ``metablocks.create_model`` stays a
classifier for eval, export and benchmarks), and the embedding is ``forward_head(x, pre_logits=True)``;
``eval_features: true`` returns the embedding in eval mode, as the official ``forward`` does.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.components.heads.classifier import checked_pool
from metablocks.fields import Probability, Width
from metablocks.registry import Component, Context, Ref, register


class ReIDHeadConfig(Component):
    pool: Literal["avg", "max", ""] = "avg"  # "": no global pool, the embedding and classifier at every position
    width: Width = 512  # of the embedding (torchreid's feature_dim)
    act: Annotated[Component, Ref("act")] = "relu"
    drop_rate: Probability = 0.0  # on the embedding, before the classifier (torchreid: dropout_p=None)
    eval_features: bool = False  # eval mode returns the embedding instead of the logits (the official forward)

    def nested(self, ctx: Context) -> list[tuple[tuple[Any, ...], Component, Context]]:
        return [(("act",), self.act, Context(self.width))]

    def build(self, ctx: Context) -> nn.Module:
        return self.module(ctx.dim, ctx.out_dim, **self.kwargs())


@register("head", "reid", config=ReIDHeadConfig)
class ReIDHead(nn.Module):
    """pool -> ``embed`` (Linear) -> ``norm`` (BatchNorm1d) -> act -> drop -> ``fc``; ``pre_logits`` gives the ``width``
    embedding, ``reset`` replaces only ``fc`` (Zhou et al. 2019)."""

    def __init__(self, dim: int, num_classes: int, *, pool: str = "avg", width: int = 512, act: Component,
                 drop_rate: float = 0.0, eval_features: bool = False) -> None:
        super().__init__()
        self.pool, self.eval_features = pool, eval_features
        self.num_features = self.hidden_size = width  # hidden_size: what pre_logits gives
        self.embed = nn.Linear(dim, width)
        self.norm = nn.BatchNorm1d(width)
        self.act = inplace_act(act)  # on the norm's fresh output
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: the embedding out); ``pool`` sets the global pool ("avg", "max",
        or "": none, the embedding at every position)."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if pool is not None:
            self.pool = checked_pool(pool)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # (B, C, H, W)
        if self.pool == "":  # the embedding at every position: (B, C, H, W) -> (B, width or classes, H, W)
            b, _, h, w = x.shape
            v = self.embed(x.permute(0, 2, 3, 1).reshape(b * h * w, -1))
            v = self.drop(self.act(self.norm(v)))
            out = v if pre_logits or (self.eval_features and not self.training) else self.fc(v)
            return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        v = x.mean((2, 3)) if self.pool == "avg" else x.amax((2, 3))  # (B, C)
        v = self.drop(self.act(self.norm(self.embed(v))))  # (B, width): the re-ID embedding
        if pre_logits or (self.eval_features and not self.training):
            return v
        return self.fc(v)
