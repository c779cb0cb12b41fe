"""The one generic model: stem -> stages (downsample, blocks) -> head, built from a Recipe.

    x (B, 3, H, W) -> stem -> stages[0] -> ... -> stages[-1] -> head -> logits (B, num_classes)

Stages take and return channels-first maps; inside, blocks run in their own layout (see blocks.py).
The API follows timm: forward_features, forward_head(pre_logits=), forward_intermediates,
reset_classifier, set_grad_checkpointing, feature_info.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from metablocks.blocks import Block, BlockConfig
from metablocks.layout import permutation
from metablocks.recipe.checks import check_recipe, stem_channels  # noqa: F401  (check_recipe: re-exported)
from metablocks.recipe.errors import RecipeError, component_problems
from metablocks.recipe.loader import load_recipe
from metablocks.recipe.schema import Recipe, StageConfig
from metablocks.registry import Component, Context, Layout

if TYPE_CHECKING:
    from metablocks.features import FeatureExtractor


class Stage(nn.Module):
    """Downsample, then blocks; takes and returns (B, C, H, W), permuting only where block layouts change."""

    def __init__(self, in_dim: int, config: StageConfig, *, resolution: tuple[int, int], drop_path: list[float],
                 index: int) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = (config.downsample.build(Context(in_dim, out_dim=config.dim, resolution=resolution, stage=index))
                           if config.downsample is not None else nn.Identity())
        if config.downsample is not None:
            resolution = config.downsample.out_resolution(resolution)
        self.resolution = resolution
        layout: Layout = "channels_first"
        blocks = []
        for j in range(config.depth):
            block_config = config.block(j)
            layout = block_config.stream_layout(layout)
            blocks.append(Block(config.dim, block_config, resolution=resolution, drop_path=drop_path[j],
                                io_layout=layout, stage=index, block=j))
        self.blocks = nn.Sequential(*blocks)
        self.plan_permutes()

    def plan_permutes(self) -> None:
        """One permute wherever consecutive blocks' layouts differ, and back to channels-first at the end."""
        layout: Layout = "channels_first"
        perms = []
        for block in self.blocks:
            perms.append(permutation(layout, block.io_layout))
            layout = block.io_layout
        self._perms = tuple(perms)
        self._out_perm = permutation(layout, "channels_first")

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for perm, block in zip(self._perms, self.blocks):
            if perm:
                x = x.permute(perm)
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and self.training else block(x)
        return x.permute(self._out_perm) if self._out_perm else x


class MetaModel(nn.Module):
    """A backbone built from a Recipe; ``model.recipe`` is the resolved recipe it was built from."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.num_classes = recipe.num_classes
        first = stem_channels(recipe)
        self.stem = recipe.stem.build(Context(recipe.in_chans, out_dim=first, resolution=recipe.img_size))
        resolution = recipe.stem.out_resolution(recipe.img_size)
        depths = [stage.depth for stage in recipe.stages]
        rates = torch.linspace(0, recipe.drop_path_rate, sum(depths), device="cpu").split(depths)  # cpu: also under torch.device("meta")
        stages, dim, self.feature_info = [], first, []
        reduction = recipe.img_size[0] / resolution[0]
        for i, stage in enumerate(recipe.stages):
            stages.append(Stage(dim, stage, resolution=resolution, drop_path=rates[i].tolist(), index=i))
            reduction *= resolution[0] / stages[-1].resolution[0]
            resolution, dim = stages[-1].resolution, stage.dim
            self.feature_info.append(dict(num_chs=dim, reduction=round(reduction), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = dim
        self.head = recipe.head.build(Context(dim, out_dim=recipe.num_classes, resolution=resolution))
        self.fixed_resolution = any(getattr(type(c), "fixed_resolution", False)
                                    for s in recipe.stages for c in (*s.token_mixer, *s.channel_mixer))
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.fixed_resolution and tuple(x.shape[-2:]) != tuple(self.recipe.img_size):
            raise ValueError(f"{self.recipe.name} mixes over a fixed {self.recipe.img_size[0]}x{self.recipe.img_size[1]} "
                             f"token grid; got a {x.shape[-2]}x{x.shape[-1]} input (build with img_size= to change it)")
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Iterable[int] | None = None) -> list[Tensor]:
        """The (B, C, H, W) output of each stage in ``indices`` (all by default), for dense tasks."""
        wanted = set(range(len(self.stages)) if indices is None else (i % len(self.stages) for i in indices))
        x, out = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                out.append(x)
            if i >= max(wanted):
                break
        return out

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (0: forward returns pooled features)."""
        self.head.reset(num_classes)
        self.num_classes = num_classes
        self.head.fc.apply(_init_weights)
        self.recipe = self.recipe.model_copy(update={"num_classes": num_classes})

    _deploy_root = True  # metablocks.deploy folds this model's parts; it does not call our reparameterize()

    def reparameterize(self) -> MetaModel:
        """Deploy mode, in place: fold BatchNorms, parallel branches and layer scales into single layers (eval mode)."""
        from metablocks.deploy import deploy

        return deploy(self)  # type: ignore[return-value]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_token_mixer(self, token_mixer: str | Mapping[str, Any] | Component, *, stages: Iterable[int] | None = None,
                        blocks: Iterable[int] | None = None) -> None:
        """Swap the token mixer of the given stages/blocks (all by default) for a freshly initialized one.

        Norms, channel mixers and scales keep their weights; ``model.recipe`` is updated to match.
        """
        from metablocks.recipe.errors import validate

        swapped = validate(BlockConfig, {"token_mixer": token_mixer}, source="set_token_mixer(...)").token_mixer
        stage_ids = range(len(self.stages)) if stages is None else [s % len(self.stages) for s in stages]
        new_stages = list(self.recipe.stages)
        for s in stage_ids:
            stage, config = self.stages[s], self.recipe.stages[s]
            block_ids = range(config.depth) if blocks is None else [b % config.depth for b in blocks]
            mixers = [config.token_mixer[j % len(config.token_mixer)] for j in range(config.depth)]
            for j in block_ids:
                mixers[j] = swapped
            if len(set(m.model_dump_json() for m in mixers)) == 1:
                mixers = mixers[:1]
            new_stages[s] = config.model_copy(update={"token_mixer": mixers})
            _check_stage(new_stages[s], stage.resolution, s)
            rebuilt = Stage(config.dim, new_stages[s], resolution=stage.resolution, drop_path=[0.0] * config.depth, index=s)
            rebuilt.apply(_init_weights)
            for j, (old, new) in enumerate(zip(stage.blocks, rebuilt.blocks)):
                if j in block_ids:
                    _copy_matching(old, new, skip="token_mixer")
                    for name in ("drop_path1", "drop_path2"):
                        if hasattr(old, name) and not hasattr(new, name):
                            new.add_module(name, getattr(old, name))
                else:
                    rebuilt.blocks[j] = old
            rebuilt.downsample = stage.downsample
            rebuilt.plan_permutes()
            self.stages[s] = rebuilt
        self.recipe = self.recipe.model_copy(update={"stages": new_stages})


def _check_stage(config: StageConfig, resolution: tuple[int, int], index: int) -> None:
    ctx = Context(config.dim, resolution=resolution, stage=index)
    problems = [p for c in config.token_mixer for p in component_problems(c, ctx, ("token_mixer",), None)]
    if problems:
        raise RecipeError(problems)


def _copy_matching(old: nn.Module, new: nn.Module, skip: str) -> None:
    """Copy ``old``'s weights into ``new`` wherever names match (reshaping linear <-> 1x1 conv), except under ``skip``."""
    target = new.state_dict()
    for name, value in old.state_dict().items():
        if not name.startswith(skip + ".") and name in target and value.numel() == target[name].numel():
            target[name] = value.reshape(target[name].shape)
    new.load_state_dict(target)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(recipe: str | Path | Mapping[str, Any] | Recipe, *,
                overrides: Mapping[str, Any] | Iterable[str] | None = None, **fields: Any) -> MetaModel:
    """Build a model from a recipe (file, shipped name, dict or Recipe).

    ``fields`` override top-level recipe fields (``num_classes=10``, ``img_size=32``, ``drop_path_rate=0.1``);
    ``overrides`` are dotted paths (``{"stages[2].token_mixer.type": "attention"}``).
    """
    merged = dict(overrides.items()) if isinstance(overrides, Mapping) else None
    pairs = list(fields.items())
    if merged is not None:
        recipe = load_recipe(recipe, {**merged, **dict(pairs)})
    else:
        recipe = load_recipe(recipe, [*(overrides or []), *(f"{k}={_yaml(v)}" for k, v in pairs)] or None)
    return MetaModel(recipe)


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def create_model(name: str, *, features_only: bool = False, out_indices: Iterable[int] | None = None,
                 **fields: Any) -> MetaModel | FeatureExtractor:
    """Build a shipped recipe by name (``create_model("caformer_s18", num_classes=10)``).

    ``features_only=True`` returns a FeatureExtractor (metablocks/features.py): no head, forward gives the
    stage outputs in ``out_indices`` (all stages by default), as timm's ``features_only``.
    """
    model = build_model(name, **fields)
    if not features_only:
        return model
    from metablocks.features import FeatureExtractor

    return FeatureExtractor(model, out_indices)
