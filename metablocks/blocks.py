"""The block: a list of residual branches, each a short path of components.

    branch i:  x = res_scale_i(x) + drop_path(layer_scale_i(path_i(x)))

Block shapes are named presets of paths: "metaformer" is [[norm, token_mixer], [norm, channel_mixer]]
(PoolFormer, ConvFormer, CAFormer, ViT, Swin), "convnext" is [[token_mixer, norm, channel_mixer]]
(ConvNeXt, InceptionNeXt). A recipe can also spell its ``branches`` out.

Each component works in its own channel layout; the block picks one layout for its residual stream
(the token mixer's, else the channel mixer's, else the norm's, else the incoming one) and permutes only
around components that disagree with it. A stage of conv mixers runs channels-first end to end, a stage of
attention channels-last, with one permute at each stage boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from torch import Tensor, nn

from metablocks.components.acts import inplace_act
from metablocks.fields import MAX_IMG_SIZE, Probability, Scale, Width
from metablocks.layout import permutation, resolve
from metablocks.registry import Component, Context, Layout, Ref, did_you_mean

Slot = Literal["norm", "token_mixer", "channel_mixer"]

BLOCK_SHAPES: dict[str, tuple[tuple[Slot, ...], ...]] = {
    "metaformer": (("norm", "token_mixer"), ("norm", "channel_mixer")),
    "convnext": (("token_mixer", "norm", "channel_mixer"),),
    "postnorm": (("token_mixer", "norm"), ("channel_mixer", "norm")),
}


def register_block_shape(name: str, branches: list[list[Slot]]) -> None:
    """Add a named block shape: a list of residual branches, each a list of slots."""
    BLOCK_SHAPES[name] = tuple(tuple(branch) for branch in branches)


class BlockConfig(BaseModel):
    """Everything one block needs: its shape and the component in each slot."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    shape: str = "metaformer"
    branches: list[list[Slot]] | None = None  # spelled-out branches; overrides ``shape``
    norm: Annotated[Component, Ref("norm")] | None = "layernorm"
    token_mixer: Annotated[Component, Ref("token_mixer")] = "pooling"
    channel_mixer: Annotated[Component, Ref("channel_mixer")] | None = "mlp"
    layer_scale: Scale | None = None  # init value of a learnable per-channel scale on each branch
    res_scale: Scale | None = None  # init value of a learnable per-channel scale on each shortcut
    post_act: Annotated[Component, Ref("act")] | None = None  # after the residual sum (ResNet's final ReLU)
    layout: Literal["channels_first", "channels_last"] | None = None  # pin the residual stream's layout (None: auto)

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, shape: str) -> str:
        if shape not in BLOCK_SHAPES:
            raise ValueError(f"unknown block shape {shape!r}{did_you_mean(shape, list(BLOCK_SHAPES))}; "
                             f"allowed: {', '.join(BLOCK_SHAPES)}")
        return shape

    def paths(self) -> tuple[tuple[Slot, ...], ...]:
        """The branches, with empty slots (``channel_mixer: null``, ``norm: null``) left out."""
        spelled = BLOCK_SHAPES[self.shape] if self.branches is None else self.branches
        kept = (tuple(slot for slot in path if getattr(self, slot) is not None) for path in spelled)
        return tuple(path for path in kept if any(slot != "norm" for slot in path))

    def stream_layout(self, incoming: Layout) -> Layout:
        """The residual stream's layout: pinned, else the first component with a fixed layout decides."""
        if self.layout is not None:
            return self.layout
        for slot in ("token_mixer", "channel_mixer", "norm"):
            component = getattr(self, slot)
            if component is not None and type(component).layout != "any":
                return type(component).layout
        return incoming


class LayerScale(nn.Module):
    """Learnable per-channel scale (CaiT, Touvron et al. 2021; res_scale: Yu et al. 2022)."""

    def __init__(self, dim: int, init_value: float, channels_last: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.shaped()

    def shaped(self) -> Tensor:
        """The scale, shaped to broadcast over a (B, H, W, C) or (B, C, H, W) map."""
        return self.scale if self.channels_last else self.scale[:, None, None]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole branch per sample (Huang et al. 2016)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass(frozen=True)
class _Branch:
    steps: tuple[tuple[str, tuple[int, ...] | None], ...]  # (module name, permute before it)
    out_perm: tuple[int, ...] | None  # back to the residual stream's layout
    layer_scale: str | None
    res_scale: str | None
    drop_path: str | None


class Block(nn.Module):
    """Residual branches over one feature map; forward takes and returns ``io_layout`` (B,C,H,W or B,H,W,C)."""

    def __init__(self, dim: int, config: BlockConfig, *, resolution: tuple[int, int] | None = None,
                 drop_path: float = 0.0, io_layout: Layout | None = None, stage: int | None = None,
                 block: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.layout: Layout = config.stream_layout(io_layout or "channels_first")
        self.io_layout: Layout = io_layout or self.layout
        channels_last = self.layout == "channels_last"
        branches = []
        for i, path in enumerate(config.paths(), start=1):
            current, steps = self.layout, []
            for slot in path:
                component: Component = getattr(config, slot)
                layout = resolve(type(component).layout, self.layout)
                name = f"norm{i}" if slot == "norm" else slot
                self.add_module(name, component.build(Context(dim, resolution=resolution, layout=layout,
                                                              stage=stage, block=block)))
                steps.append((name, permutation(current, layout)))
                current = layout
            names = {}
            for kind, value in (("layer_scale", config.layer_scale), ("res_scale", config.res_scale)):
                if value is not None:
                    names[kind] = f"{kind}{i}"
                    self.add_module(names[kind], LayerScale(dim, value, channels_last))
            if drop_path > 0.0:
                names["drop_path"] = f"drop_path{i}"
                self.add_module(names["drop_path"], DropPath(drop_path))
            branches.append(_Branch(tuple(steps), permutation(current, self.layout), names.get("layer_scale"),
                                    names.get("res_scale"), names.get("drop_path")))
        self._branches = tuple(branches)
        self.post_act = inplace_act(config.post_act) if config.post_act is not None else None
        self._in_perm = permutation(self.io_layout, self.layout)
        self._out_perm = permutation(self.layout, self.io_layout)

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the block's plan unrolled (metablocks/tracing.py): same submodules, same names."""
        from metablocks.tracing import unrolled

        return unrolled(self)

    def forward(self, x: Tensor) -> Tensor:
        if self._in_perm:
            x = x.permute(self._in_perm)
        modules = self._modules
        for branch in self._branches:
            # res_scale * x before the branch, in timm's order: a lower training peak (caformer_s18: 0.6 MB)
            shortcut = modules[branch.res_scale](x) if branch.res_scale else x
            y = x
            for name, perm in branch.steps:
                y = modules[name](y.permute(perm) if perm else y)
            if branch.out_perm:
                y = y.permute(branch.out_perm)
            if branch.drop_path:
                y = modules[branch.drop_path](y)
            x = self._residual(x, shortcut, y, branch)
        if self.post_act is not None:
            x = self.post_act(x)
        return x.permute(self._out_perm) if self._out_perm else x

    def _residual(self, x: Tensor, shortcut: Tensor, y: Tensor, branch: _Branch) -> Tensor:
        """shortcut + layer_scale * y (layer scale where configured); computed in the memory of the branch output
        ``y`` when nothing can need it (see ``overwritable``), with the same arithmetic either way."""
        layer_scale = self._modules[branch.layer_scale] if branch.layer_scale else None
        if overwritable(y, x):
            return (y.mul_(layer_scale.shaped()) if layer_scale is not None else y).add_(shortcut)
        return shortcut + (layer_scale(y) if layer_scale is not None else y)


def overwritable(y: Tensor, x: Tensor) -> bool:
    """May a residual sum be written into the branch output ``y`` (as timm's ResNet does, ``x += shortcut``)?
    Only without autograd (a branch may have saved ``y`` for its backward), in eager mode (compilers, exporters,
    TorchScript and torch.fx see plain out-of-place ops and plan memory themselves), when ``y`` has ``x``'s shape, strides and dtype and
    shares no memory with it (an identity branch).
    Saves one or two allocations per residual (ResNet-50 b8: the adds take 110 instead of 200 ms). The result is
    bit-identical: the same multiply and add in the same order (a fused addcmul would round differently: 4e-7).
    A forward hook that keeps a branch's output in inference sees the sum: clone it in the hook."""
    return not torch.jit.is_scripting() and _overwritable(y, x)  # TorchScript: plain out-of-place ops


@torch.jit.unused
def _overwritable(y: Tensor, x: Tensor) -> bool:
    return (not torch.is_grad_enabled() and not isinstance(y, torch.fx.Proxy) and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and y.shape == x.shape and y.stride() == x.stride() and y.dtype == x.dtype
            and y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr())


# TorchScript reads an unused function's signature from real types (this module's annotations are strings)
_overwritable.__annotations__ = {"y": Tensor, "x": Tensor, "return": bool}


Side = Annotated[int, Strict(), Field(ge=1, le=MAX_IMG_SIZE)]


class BlockArgs(BaseModel):
    """The arguments of a standalone block beside its config, bounded like a recipe's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dim: Width
    resolution: tuple[Side, Side] | None = None
    drop_path: Probability = 0.0


def MetaFormerBlock(dim: int, *, resolution: tuple[int, int] | None = None, drop_path: float = 0.0,
                    **config: Any) -> Block:
    """A standalone block taking and returning (B, C, H, W): ``MetaFormerBlock(dim=64, token_mixer="pooling")``.

    ``config`` holds BlockConfig fields (shape, norm, token_mixer, channel_mixer, layer_scale, res_scale);
    mistakes raise RecipeError. ``resolution`` is needed only by mixers of fixed resolution.
    """
    from metablocks.recipe.errors import validate

    validate(BlockArgs, {"dim": dim, "resolution": resolution, "drop_path": drop_path}, source="MetaFormerBlock(...)")
    block_config = validate(BlockConfig, config, source="MetaFormerBlock(...)")
    from metablocks.recipe.errors import Problem, RecipeError, check_block

    if resolution is None:  # a mixer that is built for its map's size: say how to give it
        for slot in ("token_mixer", "channel_mixer"):
            component = getattr(block_config, slot)
            unsized = component.check(Context(dim)) if component is not None else []
            if unsized and not any("resolution=" in m for m in unsized) and not component.check(
                    Context(dim, resolution=(56, 56))):
                raise RecipeError([Problem("MetaFormerBlock(...)", None, slot,
                                           f"{component.type} is built for the size of its input map: give "
                                           f"the block that size, MetaFormerBlock(dim={dim}, ..., resolution=(H, W)) "
                                           f"({'; '.join(unsized)})")])
    check_block(block_config, Context(dim, resolution=resolution), source="MetaFormerBlock(...)")
    return Block(dim, block_config, resolution=resolution, drop_path=drop_path, io_layout="channels_first")
