"""Multi-scale feature maps for dense tasks: ``create_model(name, features_only=True, out_indices=(0, 1, 2, 3))``.

Like timm's ``features_only``: the model without its head, returning the (B, C, H, W) map of each feature level in
``out_indices`` (a level is a stage's output; a block's in an isotropic model such as MLP-Mixer, ViT or ConViT);
stages (blocks) after the last wanted level are dropped. Parameter names stay ``stem.*`` / ``stages.*``, so a
backbone's state_dict (without ``head.*``) loads into it. ``feature_info`` answers as timm's ``FeatureInfo``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator

from torch import Tensor, nn

from metablocks.layout import permutation

if TYPE_CHECKING:  # the model imports this module; this one needs the model's type only
    from metablocks.model import MetaModel, Stage


def stage_levels(stage: Stage, x: Any, *, per_block: bool) -> Iterator[tuple[Any, Tensor]]:
    """(what flows on, its (B, C, H, W) feature map) after each block (``per_block``: an isotropic model's levels) or
    after the whole stage. They differ for a token stage, whose stream goes on (to the head with its prefix tokens,
    or as (map, prefix tokens) to a next stage that carries them) while its feature is the map of its map tokens."""
    if stage.tokens:
        x, hw = stage.to_tokens(*x) if stage.carried else stage.to_tokens(x)
        for j, block in enumerate(stage.blocks):
            x = block(x, hw)
            if per_block or j == len(stage.blocks) - 1:
                yield stage.from_tokens(x, hw), stage.to_map(x, hw)
        if not len(stage.blocks):
            yield stage.from_tokens(x, hw), stage.to_map(x, hw)
        return
    if not per_block:
        x = stage(x)
        yield x, x
        return
    x = stage.downsample(x)
    for perm, block in zip(stage._perms, stage.blocks):
        x = block(x.permute(perm) if perm else x)
        back = permutation(block.io_layout, "channels_first")
        feature = x.permute(back) if back else x
        yield feature, feature


def feature_take_indices(count: int, indices: int | Iterable[int] | None, name: str) -> list[int]:
    """timm's feature indices: None -> all ``count`` levels, n -> the last n, a list -> those (negative from the end)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices}: {name} has {count} feature levels, so the last n takes n in 1..{count}")
        return list(range(count - indices, count))
    taken = []
    for i in indices:
        if not -count <= i < count:
            raise ValueError(f"indices: {name} has {count} feature levels ({-count}..{count - 1}), got {i}")
        taken.append(i % count)
    if not taken:
        raise ValueError(f"indices: no feature level given; {name} has {count} ({-count}..{count - 1})")
    return sorted(set(taken))




class FeatureInfo:
    """The feature levels a FeatureExtractor returns, with timm's ``FeatureInfo`` interface: ``channels()``,
    ``reduction()``, ``module_name()``, ``get_dicts()``, ``len()`` and indexing (each level a dict with ``num_chs``,
    ``reduction``, ``module``)."""

    def __init__(self, levels: list[dict[str, Any]], out_indices: tuple[int, ...]) -> None:
        self.info = [levels[i] for i in out_indices]
        self.out_indices = out_indices

    def get(self, key: str, idx: int | Iterable[int] | None = None) -> Any:
        if idx is None:
            return [level[key] for level in self.info]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def channels(self, idx: int | Iterable[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Iterable[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Iterable[int] | None = None) -> Any:
        return self.get("module", idx)

    def get_dicts(self, keys: Iterable[str] | None = None, idx: int | Iterable[int] | None = None) -> Any:
        chosen = self.info if idx is None else [self.info[idx]] if isinstance(idx, int) else [self.info[i] for i in idx]
        dicts = [dict(level) if keys is None else {k: level[k] for k in keys} for level in chosen]
        return dicts[0] if isinstance(idx, int) else dicts

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.info)

    def __eq__(self, other: object) -> bool:
        return list(self.info) == list(other) if isinstance(other, (FeatureInfo, list)) else NotImplemented

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


class FeatureExtractor(nn.Module):
    """Stem and stages of a MetaModel; forward returns one feature map per level in ``out_indices``."""

    def __init__(self, model: MetaModel, out_indices: int | Iterable[int] | None = None) -> None:
        super().__init__()
        count = len(model.feature_info)
        if out_indices is not None and not isinstance(out_indices, int):
            for i in out_indices:
                if not -count <= i < count:
                    unit = "blocks (isotropic: a level per block)" if model.isotropic else "stages"
                    raise ValueError(f"out_indices: {model.recipe.name} has {count} {unit} (0..{count - 1}), got {i}")
        self.out_indices = tuple(feature_take_indices(count, out_indices, model.recipe.name))
        last = max(self.out_indices)
        self.recipe = model.recipe
        self.isotropic = model.isotropic
        self.pretrained_cfg = dict(model.pretrained_cfg)
        self.default_cfg = self.pretrained_cfg
        self.stem = model.stem
        if model.isotropic:
            model.prune_intermediate_layers([last], prune_head=False)
            self.stages = model.stages
        else:
            self.stages = model.stages[: last + 1]
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)

    def channels(self) -> list[int]:
        return self.feature_info.channels()

    def reductions(self) -> list[int]:
        return self.feature_info.reduction()

    def forward(self, x: Tensor) -> list[Tensor]:
        x, out, level = self.stem(x), [], 0
        for stage in self.stages:
            for x, feature in stage_levels(stage, x, per_block=self.isotropic):
                if level in self.out_indices:
                    out.append(feature)  # (B, C_i, H / r_i, W / r_i)
                level += 1
        return out
