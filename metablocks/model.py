"""The one generic model: stem -> stages (downsample, blocks) -> head, built from a Recipe.

    x (B, 3, H, W) -> stem -> stages[0] -> ... -> stages[-1] -> head -> logits (B, num_classes)

Stages take and return channels-first maps; inside, blocks run in their own layout (see blocks.py). A stage whose
prefix tokens go on to the next stage hands it (map, prefix tokens) instead (metablocks/tokens.py).
The API follows timm: forward_features, forward_head(pre_logits=), forward_intermediates,
reset_classifier, set_grad_checkpointing, feature_info.

torch.fx and TorchScript read ``MetaModel.forward``'s annotations as types, so this module keeps them evaluated (no
``from __future__ import annotations``).
"""
from pathlib import Path
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from metablocks.blocks import Block, BlockConfig
from metablocks.layout import permutation
from metablocks.recipe.checks import check_recipe, stem_channels  # noqa: F401  (check_recipe: re-exported)
from metablocks.recipe.errors import Problem, RecipeError, component_problems
from metablocks.recipe.loader import load_recipe
from metablocks.recipe.schema import Recipe, StageConfig
from metablocks.registry import Component, Context, Layout
from metablocks.tokens import PrefixTokens, carried_prefixes
from metablocks.tracing import fx_tracing

from metablocks.features import FeatureExtractor, feature_take_indices, stage_levels


class Stage(nn.Module):
    """Downsample, then blocks; takes and returns (B, C, H, W), permuting only where block layouts change.

    A token stage (metablocks/tokens.py) runs its blocks on a token stream (B, P + H*W, C): ``carried`` names the
    prefix tokens an earlier stage put in, which it takes in beside the map, ``(map, prefix tokens)``; ``hands_on``: it
    gives the next stage its map and prefix tokens that way (the last stage gives the head its whole stream)."""

    def __init__(self, in_dim: int, config: StageConfig, *, resolution: tuple[int, int], drop_path: list[float],
                 index: int, carried: tuple[str, ...] = (), hands_on: bool = False) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.in_dim, self.in_resolution = in_dim, resolution
        self.carried, self.hands_on = carried, hands_on
        self.downsample = (config.downsample.build(Context(in_dim, out_dim=config.block_dim(0), resolution=resolution,
                                                           stage=index, prefix=carried))
                           if config.downsample is not None else nn.Identity())
        # the carried prefix tokens cross the downsample through its own rule (PiT's pooling projects them), or unchanged
        self.projects_prefix = bool(carried) and config.downsample is not None and config.downsample.token_mode() == "apply"
        if config.downsample is not None:
            resolution = config.downsample.out_resolution(resolution)
        dim = config.block_dim(0) if config.downsample is not None else in_dim
        # a token stage: the map flattened to (B, H*W, C), the carried and this stage's prefix tokens put in front, the
        # position embedding added, blocks on the stream
        self.tokens, self.prefix = config.tokens or bool(carried), carried + config.prefix()
        if config.prefix_tokens is not None and config.prefix():
            self.prefix_tokens = PrefixTokens(dim, config.prefix_tokens)
        if config.pos_embed is not None:
            self.pos_embed = config.pos_embed.build(Context(dim, resolution=resolution, stage=index, prefix=self.prefix,
                                                            layout="tokens" if self.tokens else "channels_first"))
        layout: Layout = "tokens" if self.tokens else "channels_first"
        blocks, stride = [], config.stride
        for j in range(config.depth):
            block_config = config.block(j)
            layout = block_config.stream_layout(layout)
            blocks.append(Block(config.block_dim(j), block_config, resolution=resolution, drop_path=drop_path[j],
                                io_layout=layout, stage=index, block=j, in_dim=dim, stride=stride if j == 0 else 1,
                                prefix=self.prefix))
            resolution, dim = blocks[-1].out_resolution or resolution, config.block_dim(j)
        self.resolution = resolution  # of the stage's output map
        self.blocks = nn.Sequential(*blocks)
        self.plan_permutes()

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the stage's permute plan unrolled (metablocks/tracing.py): same submodules, same names."""
        from metablocks.tracing import unrolled

        return unrolled(self, {"prefix": Tensor} if self.carried else None)

    def plan_permutes(self) -> None:
        """One permute wherever consecutive blocks' layouts differ, and back to channels-first at the end."""
        layout: Layout = "channels_first"
        perms = []
        for block in self.blocks:
            perms.append(permutation(layout, block.io_layout))
            layout = block.io_layout
        self._perms = tuple(perms)
        self._out_perm = permutation(layout, "channels_first")

    def forward(self, x: Tensor, prefix: Optional[Tensor] = None) -> Any:
        if self.tokens:
            return self._forward_tokens(x, prefix)
        x = self.downsample(x)
        if hasattr(self, "pos_embed"):
            x = self.pos_embed(x, (x.shape[2], x.shape[3]))
        for perm, block in zip(self._perms, self.blocks):
            if perm:
                x = x.permute(perm)
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and self.training else block(x)
        return x.permute(self._out_perm) if self._out_perm else x

    def to_tokens(self, x: Tensor, prefix: Optional[Tensor] = None) -> tuple[Tensor, tuple[int, int]]:
        """The stage's input (a (B, C, H, W) map, and the (B, P, C) prefix tokens carried in) after the downsample, as
        this stage's token stream (B, P + H*W, C), and (H, W)."""
        x = self.downsample(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        if hasattr(self, "prefix_tokens"):
            x = self.prefix_tokens(x)
        if self.carried:
            assert prefix is not None, "a stage that carries prefix tokens takes them with the map"
            x = torch.cat([self.downsample.forward_prefix(prefix) if self.projects_prefix else prefix, x], dim=1)
        if hasattr(self, "pos_embed"):
            x = self.pos_embed(x, hw)
        return x, hw

    def to_map(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """A token stream's map tokens as a (B, C, H, W) map (the prefix tokens left out)."""
        return x[:, len(self.prefix):].transpose(1, 2).unflatten(2, hw)

    def from_tokens(self, x: Tensor, hw: tuple[int, int]) -> Any:
        """What the stage gives on: (map, prefix tokens) to a next stage that carries them, the stream (B, P + H*W, C)
        to the head, or the map."""
        if self.hands_on:
            return self.to_map(x, hw), x[:, : len(self.prefix)]
        return x if self.prefix else self.to_map(x, hw)

    def _forward_tokens(self, x: Tensor, prefix: Optional[Tensor]) -> Any:
        x, hw = self.to_tokens(x, prefix)
        for block in self.blocks:
            x = checkpoint(block, x, hw, use_reentrant=False) if self.grad_checkpointing and self.training else block(x, hw)
        return self.from_tokens(x, hw)


class Stages(nn.Sequential):
    """The stages in order: each takes the one before's output; a stage that carries prefix tokens also takes the
    prefix tokens the one before hands on."""

    def forward(self, x: Tensor) -> Any:
        prefix: Optional[Tensor] = None
        for stage in self:
            out = stage(x, prefix) if stage.carried else stage(x)
            if stage.hands_on:
                x, prefix = out[0], out[1]
            else:
                x = out
        return x

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the hand-over unrolled (metablocks/tracing.py), or a plain Sequential where there is none."""
        from metablocks.tracing import unrolled

        if any(stage.carried for stage in self):
            return unrolled(self)
        return nn.Sequential(OrderedDict(self._modules))


class MetaModel(nn.Module):
    """A backbone built from a Recipe; ``model.recipe`` is the resolved recipe it was built from."""

    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.num_classes = recipe.num_classes
        self.img_size = tuple(recipe.img_size)
        first = stem_channels(recipe)
        self.stem = recipe.stem.build(Context(recipe.in_chans, out_dim=first, resolution=recipe.img_size))
        resolution = recipe.stem.out_resolution(recipe.img_size)
        depths = [stage.depth for stage in recipe.stages]
        rates = list(torch.linspace(0, recipe.drop_path_rate, sum(depths), device="cpu").split(depths))  # cpu: also under torch.device("meta")
        for i, stage in enumerate(recipe.stages):  # a stage with its own schedule (CvT): linspace(0, rate, depth)
            if stage.drop_path_rate is not None:
                rates[i] = torch.linspace(0, stage.drop_path_rate, stage.depth, device="cpu")
        stages, dim, self.feature_info = [], first, []
        reduction, reductions = recipe.img_size[0] / resolution[0], []
        carried = carried_prefixes(recipe.stages)  # the prefix tokens each stage takes from the stages before
        for i, stage in enumerate(recipe.stages):
            hands_on = i + 1 < len(recipe.stages) and bool(carried[i + 1])
            stages.append(Stage(dim, stage, resolution=resolution, drop_path=rates[i].tolist(), index=i,
                                carried=carried[i], hands_on=hands_on))
            reduction *= resolution[0] / stages[-1].resolution[0]
            resolution, dim = stages[-1].resolution, stage.out_dim
            reductions.append(round(reduction))
        self.stages = Stages(*stages)
        # feature levels: the output of each stage; an isotropic model (its stages all at the stem's map size: MLP-Mixer,
        # ViT, ConViT's two stages) has one per block instead, as timm's MLP-Mixer, ViT and ConViT expose
        self.isotropic = len(stages) == 1 or all(s.in_resolution == s.resolution == stages[0].in_resolution
                                                  for s in stages)
        for i, (stage, r) in enumerate(zip(recipe.stages, reductions)):
            modules = [f"stages.{i}.blocks.{j}" for j in range(stage.depth)] if self.isotropic else [f"stages.{i}"]
            self.feature_info += [dict(num_chs=stage.block_dim(j) if self.isotropic else stage.out_dim, reduction=r,
                                       module=m) for j, m in enumerate(modules)]
        self.num_features = dim
        to_head = stages[-1].prefix  # a last stage with prefix tokens hands the head its token stream
        self.head = recipe.head.build(Context(dim, out_dim=recipe.num_classes, resolution=resolution, prefix=to_head,
                                              layout="tokens" if to_head else "channels_first"))
        self.head_hidden_size = getattr(self.head, "hidden_size", dim)  # the width forward_head(pre_logits=True) gives
        self.fixed_resolution = any(getattr(type(c), "fixed_resolution", False)
                                    for s in recipe.stages for c in s.components())
        self.apply(_init_weights)
        for module in self.modules():  # a component's own init after the model's (ConViT's local init of GPSA)
            if callable(getattr(module, "after_init", None)):
                module.after_init()
        self.pretrained_cfg = pretrained_cfg(self)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    def forward_features(self, x: Tensor) -> Tensor:
        if self.fixed_resolution and not torch.jit.is_scripting() and not fx_tracing():
            self._check_resolution(x)
        return self.stages(self.stem(x))

    @torch.jit.unused
    def _check_resolution(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"{self.recipe.name} mixes over a fixed {self.img_size[0]}x{self.img_size[1]} "
                             f"token grid; got a {x.shape[-2]}x{x.shape[-1]} input (build with img_size= to change it)")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def __prepare_scriptable__(self) -> nn.Module:
        """Script a copy of the module tree (same parameters): scripting swaps unrolled stages into their parent."""
        from metablocks.tracing import script_shell

        return script_shell(self)

    def forward_intermediates(self, x: Tensor, indices: int | Iterable[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """``(final features, [feature map of each level in indices])``, timm's signature and return.

        A level is a stage's output (a block's for an isotropic model, whose stages all keep the stem's map size;
        ``feature_info`` lists them).
        ``indices``: all levels (None), the last n (an int) or those listed (negative from the end). ``norm``: the
        head's norm on the last level where the head normalizes the map before pooling (Swin), on every level of an
        isotropic model (MLP-Mixer; ViT's and ConViT's token heads), as timm's.
        ``stop_early``: stop after the last wanted level (``final`` is then that level's map). ``output_fmt``:
        "NCHW" or "NHWC". ``intermediates_only``: return the list alone.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; allowed: 'NCHW', 'NHWC'")
        take = feature_take_indices(len(self.feature_info), indices, self.recipe.name)
        last = max(take)
        if self.fixed_resolution:
            self._check_resolution(x)
        out, feature = [], 0
        x = self.stem(x)
        for stage in self.stages:
            if stop_early and feature > last:
                break
            for x, level in stage_levels(stage, x, per_block=self.isotropic):
                if feature in take:
                    if norm and (self.isotropic or feature == len(self.feature_info) - 1):
                        level = self._level_norm(level)
                    out.append(level.permute(0, 2, 3, 1) if output_fmt == "NHWC" else level)
                feature += 1
                if stop_early and feature > last:
                    break
        if intermediates_only:
            return out
        return (x[0] if isinstance(x, tuple) else x), out  # stopped early where prefix tokens go on: the map

    def _level_norm(self, level: Tensor) -> Tensor:
        """The head's norm on a (B, C, H, W) level: a map norm (``norm_first``), a token head's per token (isotropic
        models), else none (a hierarchical token model: PiT's final norm is its class token's alone)."""
        if getattr(self.head, "norm_first", False):
            return self.head.norm(level)
        if getattr(type(self.recipe.head), "reads_tokens", False) and self.isotropic:
            return self.head.norm(level.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return level

    def prune_intermediate_layers(self, indices: int | Iterable[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages (blocks, isotropic) after the last of ``indices`` and, with ``prune_head``, the head's
        classifier and pool (timm's API); returns the kept level indices."""
        take = feature_take_indices(len(self.feature_info), indices, self.recipe.name)
        last = max(take)
        if self.isotropic:  # level ``last`` is block j of stage s, counting blocks across the stages
            s = int(self.feature_info[last]["module"].split(".")[1])
            j = last - sum(len(stage.blocks) for stage in self.stages[:s])
            self.stages = self.stages[: s + 1]
            self.stages[s].blocks = self.stages[s].blocks[: j + 1]
            self.stages[s].plan_permutes()
        else:
            self.stages = self.stages[: last + 1]
        self.stages[-1].hands_on = False  # its prefix tokens, if any, now go on with its stream
        self.feature_info = self.feature_info[: last + 1]
        width = self.feature_info[-1]["num_chs"]
        if prune_head or width != self.num_features:  # a head sized for the dropped stages goes (timm's prune_end)
            self.reset_classifier(0, "")
        if (prune_norm or width != self.num_features) and hasattr(self.head, "norm"):
            self.head.norm = nn.Identity()
        self.num_features = self.head_hidden_size = width
        return take

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: forward returns pooled features); ``global_pool`` as timm's
        ("avg", "max", or "": no pooling, forward returns a (B, C, H, W) map)."""
        self.head.reset(num_classes, global_pool)
        self.num_classes = num_classes
        self.head.fc.apply(_init_weights)
        head = self.recipe.head
        if global_pool is not None and "pool" in type(head).model_fields:
            head = head.model_copy(update={"pool": global_pool})
        self.recipe = self.recipe.model_copy(update={"num_classes": num_classes, "head": head})

    _deploy_root = True  # metablocks.deploy folds this model's parts; it does not call our reparameterize()

    def reparameterize(self) -> "MetaModel":
        """Deploy mode, in place: fold BatchNorms, parallel branches and layer scales into single layers (eval mode)."""
        from metablocks.deploy import deploy

        return deploy(self)  # type: ignore[return-value]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_token_mixer(self, token_mixer: str | Mapping[str, Any] | Component, *, stages: Iterable[int] | None = None,
                        blocks: Iterable[int] | None = None, keep_layout: bool = True) -> None:
        """Swap the token mixer of the given stages/blocks (all by default) for a freshly initialized one.

        Indices count as Python's: ``stages=[-1]`` is the last stage, ``blocks=[-1]`` each stage's last block; an
        index out of range is a RecipeError naming the valid range. Norms, channel mixers and scales keep their
        weights; ``model.recipe`` is updated to match. A mixer working in another channel layout than the block's
        stream (attention, channels-last, into a conv block) gets a permute around it, so every kept weight keeps
        its shape (``keep_layout=False``: the stream follows the new mixer, and a warning names the weights that
        change shape, e.g. a 1x1-conv MLP becoming Linear layers, values kept).
        """
        import warnings

        from metablocks.recipe.errors import validate

        swapped = validate(BlockConfig, {"token_mixer": token_mixer}, source="set_token_mixer(...)").token_mixer
        stage_ids = range(len(self.stages)) if stages is None else _checked_indices(stages, len(self.stages), "stages",
                                                                                      f"{self.recipe.name} has")
        new_stages = list(self.recipe.stages)
        for s in stage_ids:
            stage, config = self.stages[s], self.recipe.stages[s]
            templated = [name for name in dict.fromkeys(config.pattern or [])
                         if "token_mixer" in config.blocks[name].model_fields_set]
            if templated:
                raise _api_error("stages", f"stage {s} takes its token mixers from its block templates "
                                           f"({', '.join(templated)}): set_token_mixer would not reach them; edit the "
                                           f"recipe's blocks.{templated[0]}.token_mixer instead")
            block_ids = range(config.depth) if blocks is None else _checked_indices(
                blocks, config.depth, "blocks", f"stage {s} has depth {config.depth}, so it has")
            mixers = [config.token_mixer[j % len(config.token_mixer)] for j in range(config.depth)]
            for j in block_ids:
                mixers[j] = swapped
            if len(set(m.model_dump_json() for m in mixers)) == 1:
                mixers = mixers[:1]
            update: dict[str, Any] = {"token_mixer": mixers}
            layouts = {block.layout for block in stage.blocks}
            if keep_layout and config.layout is None and len(layouts) == 1:
                unpinned, layout = config.model_copy(update=update), layouts.pop()
                if any(unpinned.block(j).stream_layout(block.io_layout) != layout for j, block in enumerate(stage.blocks)):
                    update["layout"] = layout  # the new mixer would move the stream: pin the old layout
            new_stages[s] = config.model_copy(update=update)
            _check_stage(new_stages[s], stage.resolution, s)
            rebuilt = Stage(stage.in_dim, new_stages[s], resolution=stage.in_resolution, drop_path=[0.0] * config.depth,
                            index=s, carried=stage.carried, hands_on=stage.hands_on)
            rebuilt.apply(_init_weights)
            reshaped, fresh = [], []
            for j, (old, new) in enumerate(zip(stage.blocks, rebuilt.blocks)):
                if j in block_ids:
                    r, f = _copy_matching(old, new, skip="token_mixer")
                    reshaped += [f"stages.{s}.blocks.{j}.{name}" for name in r]
                    fresh += [f"stages.{s}.blocks.{j}.{name}" for name in f]
                    for name in ("drop_path1", "drop_path2"):
                        if hasattr(old, name) and not hasattr(new, name):
                            new.add_module(name, getattr(old, name))
                else:
                    rebuilt.blocks[j] = old
            if reshaped or fresh:
                warnings.warn(f"set_token_mixer: stage {s}'s new layout changed weight shapes: "
                              + (f"reshaped (values kept): {', '.join(reshaped[:6])}{' ...' if len(reshaped) > 6 else ''}"
                                 if reshaped else "")
                              + (f"; re-initialized: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}"
                                 if fresh else ""), stacklevel=2)
            rebuilt.downsample = stage.downsample
            rebuilt.plan_permutes()
            self.stages[s] = rebuilt
        self.recipe = self.recipe.model_copy(update={"stages": new_stages})


def _checked_indices(indices: Iterable[int], count: int, what: str, owner: str) -> list[int]:
    """``indices`` into ``count`` items, negative ones from the end as in Python; out of range: a RecipeError."""
    indices = list(indices)
    bad = [i for i in indices if not isinstance(i, int) or not -count <= i < count]
    if bad:
        raise _api_error(what, f"{what}={indices}: {owner} {count} {what} (indices 0..{count - 1}, or -{count}..-1 "
                               f"from the end); out of range: {', '.join(map(str, bad))}")
    return sorted({i % count for i in indices})

def _module_names(module: nn.Module, prefix: str, kinds: tuple[type, ...]) -> list[str]:
    return [f"{prefix}.{name}" for name, m in module.named_modules() if name and isinstance(m, kinds)]


def pretrained_cfg(model: "MetaModel") -> dict[str, Any]:
    """timm's pretrained_cfg for ``model``: the data config of the timm model it mirrors (``timm_name``; ImageNet
    defaults otherwise), its input size and the names of its first conv and classifier."""
    from metablocks.interop.timm_cfgs import MEAN_STD, TIMM_DATA_CFGS

    recipe = model.recipe
    tag, crop_pct, mean_std = TIMM_DATA_CFGS.get(recipe.timm_name or "", (None, 0.875, "imagenet"))
    mean, std = MEAN_STD[mean_std]
    convs = _module_names(model.stem, "stem", (nn.Conv2d, nn.Linear))
    classifier = _module_names(model.head, "head", (nn.Linear, nn.Conv2d))
    fc = [name for name in classifier if name == "head.fc" or name.startswith("head.fc.")]
    return dict(
        architecture=recipe.name, timm_name=recipe.timm_name, tag=tag, url="", file=None,
        input_size=(recipe.in_chans, *recipe.img_size),
        # eager runs any size but a token grid's; a torch.fx trace of shifted windows holds the built size's mask
        fixed_input_size=model.fixed_resolution or any(getattr(m, "traced_at_built_size", False) for m in model.modules()),
        pool_size=tuple(model.stages[-1].resolution), crop_pct=crop_pct, crop_mode="center",  # the last map's size
        interpolation="bicubic", mean=mean, std=std, num_classes=recipe.num_classes,
        first_conv=convs[0] if convs else None, classifier=fc[-1] if fc else None,
    )


def _check_stage(config: StageConfig, resolution: tuple[int, int], index: int) -> None:
    ctx = Context(config.block_dim(0), resolution=resolution, stage=index)
    problems = [p for c in config.token_mixer for p in component_problems(c, ctx, ("token_mixer",), None)]
    if problems:
        raise RecipeError(problems)


def _copy_matching(old: nn.Module, new: nn.Module, skip: str) -> tuple[list[str], list[str]]:
    """Copy ``old``'s weights into ``new`` wherever names match (reshaping linear <-> 1x1 conv), except under ``skip``;
    returns the names that were reshaped and those of ``old`` that could not be copied (left as initialized)."""
    target = new.state_dict()
    reshaped, fresh = [], []
    for name, value in old.state_dict().items():
        if name.startswith(skip + "."):
            continue
        if name in target and value.numel() == target[name].numel():
            if value.shape != target[name].shape:
                reshaped.append(name)
            target[name] = value.reshape(target[name].shape)
        else:
            fresh.append(name)
    new.load_state_dict(target)
    return reshaped, fresh


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


def _api_error(path: str, message: str) -> RecipeError:
    return RecipeError([Problem(file=None, line=None, path=path, message=message)])


def timm_names() -> dict[str, str]:
    """timm model name -> the shipped recipe that reproduces it (each recipe's ``timm_name``)."""
    from metablocks.recipe.loader import _parsed, shipped_recipes

    return {timm: name for name, path in shipped_recipes().items() if (timm := _parsed(path).get("timm_name"))}


def resolve_name(name: str) -> str:
    """A shipped recipe's name, or the recipe whose ``timm_name`` is ``name`` (``swin_tiny_patch4_window7_224``)."""
    from metablocks.recipe.loader import shipped_recipes

    if name in shipped_recipes() or Path(name).suffix in (".yaml", ".yml") or Path(name).exists():
        return name
    by_timm = timm_names()
    if name in by_timm:
        return by_timm[name]
    base, dot, tag = name.partition(".")
    if dot and (base in shipped_recipes() or base in by_timm):
        from metablocks.interop.timm_cfgs import TIMM_DATA_CFGS

        timm_name = base if base in by_timm else load_recipe(base).timm_name
        default = TIMM_DATA_CFGS.get(timm_name or "", (None,))[0]
        if tag == default:  # timm's name.tag for the config we mirror (no weights are loaded)
            return by_timm.get(base, base)
        mirrored = f"mirrors the pretrained config of {timm_name}.{default} only" if default else "mirrors no timm model"
        raise _api_error("model_name", f"{name!r}: {base} {mirrored}; timm's tags name hub weights, which metablocks does "
                                       f"not download: use {base!r} and load_pretrained for a local file")
    return name  # load_recipe says it is unknown, with a did-you-mean


_NO_HUB = ("metablocks downloads no weights (there is no model hub here); load a local timm or metablocks "
           "checkpoint (.safetensors, .pth) with pretrained=True, pretrained_cfg_overlay=dict(file='weights.pth'), "
           "or metablocks.load_pretrained(model, 'weights.pth') (a classifier of another size is left freshly "
           "initialized, as timm's pretrained=True, num_classes=N)")


def create_model(model_name: str, pretrained: bool = False, *, features_only: bool = False,
                 out_indices: int | Iterable[int] | None = None, feature_cls: str | None = None,
                 num_classes: int | None = None, global_pool: str | None = None, drop_rate: float | None = None,
                 drop_path_rate: float | None = None, in_chans: int | None = None,
                 img_size: int | tuple[int, int] | None = None, pretrained_cfg_overlay: Mapping[str, Any] | None = None,
                 checkpoint_path: str | Path | None = None,
                 overrides: Mapping[str, Any] | Iterable[str] | None = None,
                 **fields: Any) -> "MetaModel | FeatureExtractor":
    """Build a shipped recipe by name or by its timm name, with timm's keyword arguments.

    ``create_model("caformer_s18", num_classes=10)``, ``create_model("swin_tiny_patch4_window7_224")``.
    timm's kwargs: ``num_classes``, ``global_pool`` ("avg", "max", "": none), ``drop_rate`` (before the
    classifier), ``drop_path_rate``, ``in_chans``, ``img_size``; ``pretrained=True`` with
    ``pretrained_cfg_overlay=dict(file=PATH)`` loads a local timm or metablocks checkpoint as
    ``load_pretrained`` does (a classifier of another size stays fresh, the first conv is adapted to
    ``in_chans``); ``checkpoint_path=PATH`` loads a checkpoint of this exact model strictly, as timm's.
    ``features_only=True`` returns a FeatureExtractor (metablocks/features.py): no head, forward gives the
    feature maps in ``out_indices`` (all levels by default), as timm's ``features_only``.
    ``overrides`` and other ``fields`` are recipe fields and dotted overrides, as for ``build_model``.
    """
    overlay = dict(pretrained_cfg_overlay or {})
    file = overlay.get("file")
    if pretrained and not file:
        raise _api_error("pretrained", _NO_HUB)
    if feature_cls not in (None, "getter"):
        raise _api_error("feature_cls", f"feature_cls={feature_cls!r} is not supported; allowed: None or 'getter' "
                                        "(both give metablocks' FeatureExtractor)")
    name = resolve_name(model_name)
    base = load_recipe(name) if global_pool is not None or drop_rate is not None else None
    dotted = dict(overrides.items()) if isinstance(overrides, Mapping) else {}
    listed = [] if isinstance(overrides, Mapping) else list(overrides or [])
    for kwarg, field, value in (("global_pool", "pool", global_pool), ("drop_rate", "drop_rate", drop_rate)):
        if value is None:
            continue
        if field not in type(base.head).model_fields:
            raise _api_error(kwarg, f"{kwarg}={value!r}: the {base.name} head ({type(base.head).__name__}) has no "
                                    f"{field!r} field")
        dotted[f"head.{field}"] = value
    given = dict(num_classes=num_classes, drop_path_rate=drop_path_rate, in_chans=in_chans, img_size=img_size)
    fields.update({k: v for k, v in given.items() if v is not None})
    import json

    model = build_model(name, overrides=[*listed, *(f"{k}={json.dumps(v)}" for k, v in dotted.items())] or None,
                        **fields)
    unknown = set(overlay) - set(model.pretrained_cfg)
    if unknown:
        raise _api_error("pretrained_cfg_overlay", f"unknown key(s) {', '.join(sorted(unknown))}; allowed: "
                                                   f"{', '.join(model.pretrained_cfg)}")
    model.pretrained_cfg.update(overlay)
    if pretrained:
        from metablocks.interop.timm import load_pretrained

        load_pretrained(model, file)
    if checkpoint_path is not None:
        from metablocks.interop.timm import load_pretrained

        load_pretrained(model, checkpoint_path, strict=True)
    if not features_only:
        return model
    return FeatureExtractor(model, out_indices)
