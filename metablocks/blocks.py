"""The block: a list of branches over named slots, each branch a short path of components.

    residual:  x = res_scale_i(shortcut(x)) + drop_path(layer_scale_i(path_i(x)))    (shortcut: identity unless the
                                                                                     branch changes width or stride)
    plain:     x = path_i(x)                 (FFNet's and LSNet's squeeze-excite step, a patch embedding)
    concat:    x = cat([x, path_i(x)])       (Next-ViT's NTB: the stream grows by the path's output channels)

Block shapes are named presets of paths: "metaformer" is [[norm, token_mixer], [norm, channel_mixer]]
(PoolFormer, ConvFormer, CAFormer, ViT, Swin), "convnext" is [[token_mixer, norm, channel_mixer]]
(ConvNeXt, InceptionNeXt). A recipe can also spell its ``branches`` out, over the three standard slots and any
``slots`` of its own (``cpe``, ``se``, a second norm of another type), each branch with its own kind and drop-path,
layer-scale and res-scale switches.

Slots and names: ``norm`` in a path is a fresh instance of the block's norm at each use, named ``norm1``, ``norm2``, ...
in order of appearance; every other slot is one module named by the slot (used in two paths, it is shared). Layer
scales, res scales and drop paths are numbered by branch (``layer_scale1``...).

Transitions: the first branch of a block takes the incoming width to the block's (or to its own ``width``) and
carries the stage's stride in its first block: the first component of its path that can change the width
(``Component.can_change``) is built with ``Context(dim=in, out_dim=out, stride=s)``; a residual branch that changes
the map adds the block's ``shortcut`` (a 1x1 projection). So a ResNet stage is ``depth`` equal blocks, the first with
stride 2 and a projection: the paper's number of blocks.

Each component works in its own channel layout; the block picks one layout for its residual stream (the token
mixer's, else the channel mixer's, else the norm's, else the slots' in order, else the incoming one) and permutes
only around components that disagree with it. A stage of conv mixers runs channels-first end to end, a stage of
attention channels-last, with one permute at each stage boundary.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints, field_validator,
                      model_serializer, model_validator)
from torch import Tensor, nn

from metablocks.components.acts.elementwise import inplace_act
from metablocks.fields import MAX_IMG_SIZE, Probability, Ratio, Scale, Width
from metablocks.layout import permutation, resolve
from metablocks.registry import SLOT_KINDS, Component, Context, Layout, Ref, did_you_mean

Slot = Literal["norm", "token_mixer", "channel_mixer"]
STANDARD_SLOTS: tuple[str, ...] = ("norm", "token_mixer", "channel_mixer")
SlotName = Annotated[str, Strict(), StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
# module names the block gives itself: a slot of the same name would collide with them
_RESERVED = r"^(norm\d+|layer_scale\d+|res_scale\d+|drop_path\d+|shortcut|post_act|config|dim|layout|io_layout)$"

BLOCK_SHAPES: dict[str, tuple[tuple[Slot, ...], ...]] = {
    "metaformer": (("norm", "token_mixer"), ("norm", "channel_mixer")),
    "convnext": (("token_mixer", "norm", "channel_mixer"),),
    "postnorm": (("token_mixer", "norm"), ("channel_mixer", "norm")),
}


def register_block_shape(name: str, branches: list[list[Slot]]) -> None:
    """Add a named block shape: a list of residual branches, each a list of slots."""
    BLOCK_SHAPES[name] = tuple(tuple(branch) for branch in branches)


def _path_as_branch(value: Any) -> Any:
    return {"path": value} if isinstance(value, list) else value


DropScale = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]


class Branch(BaseModel):
    """One branch of a block: a path of slots and how its output joins the stream."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    path: list[SlotName] = Field(min_length=1, max_length=64)
    kind: Literal["residual", "plain", "concat"] = "residual"
    # residual branches only (None: the block's setting; plain and concat branches have none of them)
    drop_path: bool | DropScale | None = None  # true: the block's rate; false: none; a number: that fraction of it
    layer_scale: bool | None = None  # the block's layer_scale on this branch (true) or not (false)
    res_scale: bool | None = None  # the block's res_scale on this branch's shortcut (true) or not (false)
    # the stream's width after this branch, as a multiple of the block's dim (plain and concat branches, or the first
    # branch's transition), rounded as timm's make_divisible to ``round_to``
    width: Ratio | None = None
    round_to: Width | None = None

    @model_validator(mode="after")
    def _options_fit_kind(self) -> Branch:
        if self.kind != "residual":
            given = [name for name in ("drop_path", "layer_scale", "res_scale") if getattr(self, name) not in (None, False)]
            if given:
                raise ValueError(f"a {self.kind} branch has no shortcut to scale or drop: {', '.join(given)} applies "
                                 f"to residual branches only")
        if self.round_to is not None and self.width is None:
            raise ValueError("round_to rounds the branch's width: give width too")
        return self

    @model_serializer(mode="wrap")
    def _as_list(self, handler: Any) -> Any:
        """A branch with only a path is written as its path (the form every earlier recipe uses)."""
        dumped = handler(self)
        if all(value is None for key, value in dumped.items() if key not in ("path", "kind")) and self.kind == "residual":
            return dumped["path"]
        return {k: v for k, v in dumped.items() if v is not None and not (k == "kind" and v == "residual")}

    def target_width(self, dim: int) -> int | None:
        """The width this branch asks for, for a block of width ``dim`` (None: it keeps the stream's)."""
        if self.width is None:
            return None
        return make_divisible(dim * self.width, self.round_to) if self.round_to else max(1, int(dim * self.width))


def make_divisible(value: float, divisor: int) -> int:
    """timm's rounding of a width to a multiple of ``divisor`` (never below 90% of ``value``)."""
    rounded = max(divisor, int(int(value) + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * int(value) else rounded


BranchSpec = Annotated[Branch, BeforeValidator(_path_as_branch, json_schema_input_type=list[SlotName] | Branch)]
SlotComponent = Annotated[Component, Ref(SLOT_KINDS)]
NEW_BLOCK_FIELDS = ("slots", "shortcut")  # left out of dumps at their default, so earlier recipes keep their model_id


class BlockConfig(BaseModel):
    """Everything one block needs: its branches and the component in each slot."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    shape: str = "metaformer"
    branches: list[BranchSpec] | None = Field(default=None, max_length=64)  # spelled-out branches; override ``shape``
    norm: Annotated[Component, Ref("norm")] | None = "layernorm"
    token_mixer: Annotated[Component, Ref("token_mixer")] = "pooling"
    channel_mixer: Annotated[Component, Ref("channel_mixer")] | None = "mlp"
    slots: dict[SlotName, SlotComponent | None] = Field(default_factory=dict, max_length=64)  # more named components
    shortcut: Annotated[Component, Ref("shortcut")] | None = None  # a residual branch's projection when it changes the map
    layer_scale: Scale | None = None  # init value of a learnable per-channel scale on each branch
    res_scale: Scale | None = None  # init value of a learnable per-channel scale on each shortcut
    post_act: Annotated[Component, Ref("act")] | None = None  # after the residual sum (ResNet's final ReLU)
    # pin the residual stream's layout (None: auto); "tokens": a (B, N, C) token stream, as ViT runs end to end
    layout: Literal["channels_first", "channels_last", "tokens"] | None = None

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, shape: str) -> str:
        if shape not in BLOCK_SHAPES:
            raise ValueError(f"unknown block shape {shape!r}{did_you_mean(shape, list(BLOCK_SHAPES))}; "
                             f"allowed: {', '.join(BLOCK_SHAPES)}")
        return shape

    @field_validator("slots")
    @classmethod
    def _slot_names(cls, slots: dict[str, Any]) -> dict[str, Any]:
        import re

        for name in slots:
            if name in STANDARD_SLOTS:
                raise ValueError(f"slot {name!r} is a standard slot: set it as the block's {name}: field")
            if re.match(_RESERVED, name):
                raise ValueError(f"slot name {name!r} is taken by a module the block makes itself (norm1.., "
                                 f"layer_scale1.., res_scale1.., drop_path1.., shortcut, post_act): choose another")
        return slots

    @model_validator(mode="after")
    def _paths_name_slots(self) -> BlockConfig:
        known = [*STANDARD_SLOTS, *self.slots]
        for i, branch in enumerate(self.branches or []):
            for name in branch.path:
                if name not in known:
                    raise ValueError(f"branches[{i}] names slot {name!r}{did_you_mean(name, known)}, which this block "
                                     f"does not have; its slots: {', '.join(known)} (declare more under slots:)")
        return self

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: Any) -> Any:
        dumped = handler(self)
        for name in NEW_BLOCK_FIELDS:
            if name in dumped and dumped[name] in ({}, None):
                del dumped[name]
        return dumped

    def component(self, slot: str) -> Component | None:
        """The component in ``slot`` (a standard slot or one of ``slots``)."""
        return getattr(self, slot) if slot in STANDARD_SLOTS else self.slots.get(slot)

    def branch_specs(self) -> tuple[Branch, ...]:
        """The branches, with empty slots (``channel_mixer: null``, ``norm: null``) left out of their paths and
        branches left without anything but norms dropped."""
        spelled = ([Branch(path=list(p)) for p in BLOCK_SHAPES[self.shape]] if self.branches is None else self.branches)
        kept = []
        for branch in spelled:
            path = [slot for slot in branch.path if self.component(slot) is not None]
            if any(slot != "norm" for slot in path):
                kept.append(branch if path == branch.path else branch.model_copy(update={"path": path}))
        return tuple(kept)

    def paths(self) -> tuple[tuple[str, ...], ...]:
        """Each branch's path of slots (see ``branch_specs``)."""
        return tuple(tuple(b.path) for b in self.branch_specs())

    def stream_layout(self, incoming: Layout) -> Layout:
        """The residual stream's layout: pinned, else the first component with a fixed layout decides (a token
        stream stays one: its components work on it or run on its map, see ``TokenMode``)."""
        if incoming == "tokens":
            return "tokens"
        if self.layout is not None:
            return self.layout
        for component in (self.token_mixer, self.channel_mixer, self.norm, *self.slots.values()):
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


# ------------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Placed:
    """One component of a block as it will be built: its module name, its place in the config, its context."""

    name: str
    loc: tuple[Any, ...]  # field path inside the block config (("slots", "cpe"), ("token_mixer",), ("norm",))
    component: Component
    ctx: Context
    passthrough: bool = False  # in a token stream: runs on the map, the prefix tokens pass it unchanged


@dataclass
class BranchPlan:
    index: int  # 1-based
    spec: Branch
    steps: list[Placed]
    in_dim: int
    out_dim: int  # the stream's width after the branch
    shortcut: Placed | None = None
    drop_path: float = 0.0


@dataclass
class BlockPlan:
    """How a block config is built for a given input: every component with the context it sees, and the problems
    (with their place in the config) that would make the build fail. The builder and the recipe checks both read it."""

    layout: Layout
    branches: list[BranchPlan] = field(default_factory=list)
    problems: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    out_dim: int = 0
    out_resolution: tuple[int, int] | None = None
    untransitioned: str | None = None  # why the first branch cannot carry the block's transition (None: it can)

    def placed(self) -> list[Placed]:
        """Every component once (a shared slot once), shortcuts included."""
        seen, found = set(), []
        for branch in self.branches:
            for step in [*branch.steps, *([branch.shortcut] if branch.shortcut else [])]:
                if step.name not in seen:
                    seen.add(step.name)
                    found.append(step)
        return found


def strided(resolution: tuple[int, int] | None, stride: int) -> tuple[int, int] | None:
    """A map's size after a transition of ``stride`` (same padding: ceil(H / s))."""
    return None if resolution is None else (math.ceil(resolution[0] / stride), math.ceil(resolution[1] / stride))


def plan_block(config: BlockConfig, dim: int, *, in_dim: int | None = None, stride: int = 1,
               resolution: tuple[int, int] | None = None, io_layout: Layout | None = None, drop_path: float = 0.0,
               stage: int | None = None, block: int | None = None, prefix: tuple[str, ...] = ()) -> BlockPlan:
    """Place every component of ``config`` for a block of width ``dim`` taking ``in_dim`` channels (and ``stride``)."""
    layout = config.stream_layout(io_layout or "channels_first")
    plan = BlockPlan(layout)
    cur = in_dim if in_dim is not None else dim
    res = resolution
    norms = 0
    used: dict[str, Placed] = {}
    specs = config.branch_specs()
    branch_loc = ("branches",) if config.branches is not None else ("shape",)
    for i, spec in enumerate(specs, start=1):
        loc = branch_loc + ((i - 1,) if config.branches is not None else ())
        target = spec.target_width(dim)
        if target is None:
            target = dim if (i == 1 or spec.kind == "concat") else cur
        step_stride = stride if i == 1 else 1
        out = target - cur if spec.kind == "concat" else target
        if spec.kind == "concat" and out < 1:
            plan.problems.append((loc, f"branch {i} concatenates to width {target}, but the stream already has {cur} "
                                       f"channels"))
            out = cur
        changes = out != cur or step_stride != 1
        changer = None
        if changes and layout == "tokens":
            plan.problems.append((loc, f"branch {i} would change the token stream (width {cur} -> {out}, stride "
                                       f"{step_stride}): the blocks of a token stage keep their width and map (a "
                                       f"downsample before the stage changes them)"))
            changes = False
        if changes:
            changer = next((k for k, slot in enumerate(spec.path) if slot != "norm"
                            and type(config.component(slot)).can_change(step_stride)), None)
            if changer is None:
                if i == 1:
                    plan.untransitioned = (f"none of {', '.join(config.component(s).name for s in spec.path if s != 'norm')}"
                                           f" takes in_dim/out_dim")
                what = (f"from width {cur} to {out}" if out != cur else "") + (
                    f"{' and ' if out != cur else ''}with stride {step_stride}" if step_stride != 1 else "")
                plan.problems.append((loc, f"branch {i} must change the map {what}, but none of its components "
                                           f"({', '.join(config.component(s).name for s in spec.path)}) can: use one "
                                           f"that takes in_dim/out_dim{' and stride' if step_stride != 1 else ''} "
                                           f"(e.g. a bottleneck or a patch embedding)"))
        steps = []
        width, here = cur, res
        for k, slot in enumerate(spec.path):
            component = config.component(slot)
            assert component is not None
            passthrough = layout == "tokens" and component.token_mode() == "passthrough"
            own = resolve(type(component).layout, "channels_last" if passthrough else layout)
            if layout == "tokens" and not passthrough:
                own = "tokens"
            if k == changer:
                ctx = Context(width, out_dim=out, resolution=here, layout=own, stage=stage, block=block,
                              stride=step_stride, drop_path=drop_path, prefix=prefix if own == "tokens" else ())
                width, here = out, strided(here, step_stride)
            else:
                ctx = Context(width, resolution=here, layout=own, stage=stage, block=block, drop_path=drop_path,
                              prefix=prefix if own == "tokens" else ())
            if slot == "norm":
                norms += 1
                name, slot_loc = f"norm{norms}", ("norm",)
            else:
                name, slot_loc = slot, ((slot,) if slot in STANDARD_SLOTS else ("slots", slot))
            placed = Placed(name, slot_loc, component, ctx, passthrough)
            if name in used and used[name].ctx != ctx:
                plan.problems.append((slot_loc, f"slot {slot!r} is used twice, at width {used[name].ctx.dim} and at "
                                                f"{ctx.dim}: one module cannot be both (give each use its own slot)"))
            used[name] = placed
            steps.append(placed)
        bp = BranchPlan(i, spec, steps, cur, out if spec.kind != "concat" else target)
        if spec.kind == "residual":
            rate = drop_path * (1.0 if spec.drop_path in (None, True) else float(spec.drop_path or 0.0))
            bp.drop_path = rate
            if changes:
                if config.shortcut is None:
                    plan.problems.append((("shortcut",), f"branch {i} changes the map (width {cur} -> {out}, stride "
                                                         f"{step_stride}) but the block has no shortcut to match it: "
                                                         f"add shortcut: projection"))
                else:
                    own = resolve(type(config.shortcut).layout, layout)
                    bp.shortcut = Placed("shortcut", ("shortcut",), config.shortcut,
                                         Context(cur, out_dim=out, resolution=res, layout=own, stage=stage, block=block,
                                                 stride=step_stride))
        plan.branches.append(bp)
        cur, res = bp.out_dim, here
    for name, component in config.slots.items():
        if component is not None and name not in used:
            plan.problems.append((("slots", name), f"slot {name!r} is in no branch's path: use it in branches, or "
                                                   f"remove it"))
    if cur != dim:
        plan.problems.append((branch_loc, f"the block's branches end at width {cur}, but the block's dim is {dim}"))
    plan.out_dim, plan.out_resolution = cur, res
    return plan


@dataclass(frozen=True)
class _Branch:
    steps: tuple[tuple[str, tuple[int, ...] | None], ...]  # (module name, permute before it)
    out_perm: tuple[int, ...] | None  # back to the residual stream's layout
    layer_scale: str | None
    res_scale: str | None
    drop_path: str | None
    kind: str = "residual"
    shortcut: tuple[tuple[int, ...] | None, tuple[int, ...] | None] | None = None  # (permute in, permute out)


class Block(nn.Module):
    """Branches over one feature map; forward takes and returns ``io_layout`` (B,C,H,W or B,H,W,C).

    ``in_dim`` and ``stride``: a transition block, taking ``in_dim`` channels to ``dim`` (and the map to 1/stride)."""

    def __init__(self, dim: int, config: BlockConfig, *, resolution: tuple[int, int] | None = None,
                 drop_path: float = 0.0, io_layout: Layout | None = None, stage: int | None = None,
                 block: int | None = None, in_dim: int | None = None, stride: int = 1,
                 prefix: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.in_dim = in_dim if in_dim is not None else dim
        plan = plan_block(config, dim, in_dim=in_dim, stride=stride, resolution=resolution, io_layout=io_layout,
                          drop_path=drop_path, stage=stage, block=block, prefix=prefix)
        if plan.problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {message}" for loc, message in plan.problems))
        self.layout: Layout = plan.layout
        self.io_layout: Layout = io_layout or self.layout
        self.out_resolution = plan.out_resolution
        self._layouts: dict[str, Layout] = {}  # each step's layout (deploy folds per channel axis)
        channels_last = self.layout in ("channels_last", "tokens")
        self._tokens = self.layout == "tokens"  # a (B, P + H*W, C) stream: forward(x, hw)
        self._prefix = len(prefix)
        passthrough: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = {}
        grid: set[str] = set()
        for placed in plan.placed():
            self.add_module(placed.name, placed.component.build(placed.ctx))
            self._layouts[placed.name] = placed.ctx.layout
            if self._tokens and not placed.passthrough and "hw" in inspect.signature(self._modules[placed.name].forward).parameters:
                grid.add(placed.name)  # works on the stream and reads the map's size (CvT's conv projections)
            if placed.passthrough:  # (permute from the (B, H, W, C) map to its layout, and back)
                passthrough[placed.name] = (permutation("channels_last", placed.ctx.layout),
                                            permutation(placed.ctx.layout, "channels_last"))
        self._passthrough = passthrough
        self._grid = frozenset(grid)
        branches = []
        for bp in plan.branches:
            current, steps = self.layout, []
            for placed in bp.steps:
                if placed.passthrough:  # the block runs it on the map, in and out of the token stream
                    steps.append((placed.name, None))
                    continue
                steps.append((placed.name, permutation(current, placed.ctx.layout)))
                current = placed.ctx.layout
            names: dict[str, str] = {}
            if bp.spec.kind == "residual":
                width = bp.out_dim
                if config.layer_scale is not None and bp.spec.layer_scale is not False:
                    names["layer_scale"] = f"layer_scale{bp.index}"
                    self.add_module(names["layer_scale"], LayerScale(width, config.layer_scale, channels_last))
                if config.res_scale is not None and bp.spec.res_scale is not False:
                    names["res_scale"] = f"res_scale{bp.index}"
                    self.add_module(names["res_scale"], LayerScale(width, config.res_scale, channels_last))
                if bp.drop_path > 0.0:
                    names["drop_path"] = f"drop_path{bp.index}"
                    self.add_module(names["drop_path"], DropPath(bp.drop_path))
            shortcut = None
            if bp.shortcut is not None:
                shortcut = (permutation(self.layout, bp.shortcut.ctx.layout), permutation(bp.shortcut.ctx.layout, self.layout))
            branches.append(_Branch(tuple(steps), permutation(current, self.layout), names.get("layer_scale"),
                                    names.get("res_scale"), names.get("drop_path"), bp.spec.kind, shortcut))
        self._branches = tuple(branches)
        self._channel_axis = -1 if channels_last else 1
        self.post_act = inplace_act(config.post_act) if config.post_act is not None else None
        self._in_perm = permutation(self.io_layout, self.layout)
        self._out_perm = permutation(self.layout, self.io_layout)

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript gets the block's plan unrolled (metablocks/tracing.py): same submodules, same names."""
        from typing import Tuple

        from metablocks.tracing import unrolled

        return unrolled(self, {"hw": Tuple[int, int]} if self._tokens else None)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """``x`` in ``io_layout``; a token stream (B, P + H*W, C) also takes its map's ``hw``."""
        if self._tokens:
            return self._forward_tokens(x, hw)
        if self._in_perm:
            x = x.permute(self._in_perm)
        modules = self._modules
        for branch in self._branches:
            shortcut = x
            if branch.shortcut is not None:
                perm_in, perm_out = branch.shortcut
                shortcut = modules["shortcut"](x.permute(perm_in) if perm_in else x)
                if perm_out:
                    shortcut = shortcut.permute(perm_out)
            if branch.res_scale:
                # res_scale * x before the branch, in timm's order: a lower training peak (caformer_s18: 0.6 MB)
                shortcut = modules[branch.res_scale](shortcut)
            y = x
            for name, perm in branch.steps:
                y = modules[name](y.permute(perm) if perm else y)
            if branch.out_perm:
                y = y.permute(branch.out_perm)
            if branch.kind == "plain":
                x = y
            elif branch.kind == "concat":
                x = torch.cat([x, y], dim=self._channel_axis)
            else:
                if branch.drop_path:
                    y = modules[branch.drop_path](y)
                x = self._residual(shortcut, y, branch)
        if self.post_act is not None:
            x = self.post_act(x)
        return x.permute(self._out_perm) if self._out_perm else x

    def _forward_tokens(self, x: Tensor, hw: tuple[int, int] | None) -> Tensor:
        """The branches over a token stream; a passthrough component runs on the map tokens alone, as a (B, H, W, C)
        map (permuted to its layout), and the prefix tokens go by it unchanged."""
        modules = self._modules
        for branch in self._branches:
            y = x
            for name, _ in branch.steps:
                if name in self._passthrough:
                    y = self._on_map(modules[name], y, hw, self._passthrough[name])
                elif name in self._grid:
                    y = modules[name](y, hw)
                else:
                    y = modules[name](y)
            if branch.kind == "plain":
                x = y
            elif branch.kind == "concat":
                x = torch.cat([x, y], dim=-1)
            else:
                shortcut = modules[branch.res_scale](x) if branch.res_scale else x
                if branch.drop_path:
                    y = modules[branch.drop_path](y)
                x = self._residual(shortcut, y, branch)
        if self.post_act is not None:
            x = self.post_act(x)
        return x

    def _on_map(self, module: nn.Module, x: Tensor, hw: tuple[int, int] | None,
                perms: tuple[tuple[int, ...] | None, tuple[int, ...] | None]) -> Tensor:
        if hw is None:
            raise ValueError("a token-stream block with a component that runs on the map needs the map's size: "
                             "block(x, hw=(H, W))")
        prefix, grid = x[:, : self._prefix], x[:, self._prefix:]
        grid = grid.unflatten(1, hw)  # (B, H, W, C)
        grid = module(grid.permute(perms[0]) if perms[0] else grid)
        grid = (grid.permute(perms[1]) if perms[1] else grid).flatten(1, 2)
        return torch.cat([prefix, grid], dim=1) if self._prefix else grid

    def _residual(self, shortcut: Tensor, y: Tensor, branch: _Branch) -> Tensor:
        """shortcut + layer_scale * y (layer scale where configured); computed in the memory of the branch output
        ``y`` when nothing can need it (see ``overwritable``), with the same arithmetic either way."""
        layer_scale = self._modules[branch.layer_scale] if branch.layer_scale else None
        if overwritable(y, shortcut):
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
    in_dim: Width | None = None
    stride: Annotated[int, Strict(), Field(ge=1, le=64)] = 1


def MetaFormerBlock(dim: int, *, resolution: tuple[int, int] | None = None, drop_path: float = 0.0,
                    in_dim: int | None = None, stride: int = 1, **config: Any) -> Block:
    """A standalone block taking and returning (B, C, H, W): ``MetaFormerBlock(dim=64, token_mixer="pooling")``.

    ``config`` holds BlockConfig fields (shape, branches, slots, norm, token_mixer, channel_mixer, shortcut,
    layer_scale, res_scale); mistakes raise RecipeError. ``resolution`` is needed only by mixers of fixed resolution.
    ``in_dim``/``stride``: a transition block (``in_dim`` channels in, the map strided).
    """
    from metablocks.recipe.errors import validate

    validate(BlockArgs, {"dim": dim, "resolution": resolution, "drop_path": drop_path, "in_dim": in_dim,
                         "stride": stride}, source="MetaFormerBlock(...)")
    block_config = validate(BlockConfig, config, source="MetaFormerBlock(...)")
    from metablocks.recipe.errors import Problem, RecipeError, check_block

    if resolution is None:  # a mixer that is built for its map's size: say how to give it
        for slot in ("token_mixer", "channel_mixer", *block_config.slots):
            component = block_config.component(slot)
            unsized = component.check(Context(dim)) if component is not None else []
            if unsized and not any("resolution=" in m for m in unsized) and not component.check(
                    Context(dim, resolution=(56, 56))):
                raise RecipeError([Problem("MetaFormerBlock(...)", None, slot,
                                           f"{component.type} is built for the size of its input map: give "
                                           f"the block that size, MetaFormerBlock(dim={dim}, ..., resolution=(H, W)) "
                                           f"({'; '.join(unsized)})")])
    check_block(block_config, Context(dim, resolution=resolution), source="MetaFormerBlock(...)", in_dim=in_dim,
                stride=stride)
    return Block(dim, block_config, resolution=resolution, drop_path=drop_path, io_layout="channels_first",
                 in_dim=in_dim, stride=stride)
