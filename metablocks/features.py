"""Multi-scale feature maps for dense tasks: ``create_model(name, features_only=True, out_indices=(0, 1, 2, 3))``.

Like timm's ``features_only``: the model without its head, returning the (B, C, H, W) output of each stage in
``out_indices``; stages after the last wanted one are dropped. Parameter names stay ``stem.*`` / ``stages.*``,
so a backbone's state_dict (without ``head.*``) loads into it.
"""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from metablocks.model import MetaModel


class FeatureExtractor(nn.Module):
    """Stem and stages of a MetaModel; forward returns one feature map per index in ``out_indices``."""

    def __init__(self, model: MetaModel, out_indices: Iterable[int] | None = None) -> None:
        super().__init__()
        count = len(model.stages)
        indices = range(count) if out_indices is None else out_indices
        for i in indices:
            if not -count <= i < count:
                raise ValueError(f"out_indices: {model.recipe.name} has {count} stages (0..{count - 1}), got {i}")
        self.out_indices = tuple(sorted({i % count for i in indices}))
        self.recipe = model.recipe
        self.stem = model.stem
        self.stages = model.stages[: max(self.out_indices) + 1]
        self.feature_info = [model.feature_info[i] for i in self.out_indices]

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self.feature_info]

    def reductions(self) -> list[int]:
        return [info["reduction"] for info in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        x, out = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out.append(x)  # (B, C_i, H / r_i, W / r_i)
        return out
