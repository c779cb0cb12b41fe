"""Deploy mode: fold a trained model into its inference form, same outputs in eval mode, fewer ops.

    model = metablocks.deploy(model)        # or model.reparameterize() on a MetaModel

Generic for every recipe, in three passes (each a no-op where it finds nothing to fold):

1. **Structural re-parameterization**: every submodule with a ``reparameterize()`` method fuses itself
   (RepLKNet's large + small kernel conv-BN branches, UniRepLKNet's dilated branches, conv-BN stacks, GRN biases).
2. **Block folds**: inside each residual branch of each Block, a BatchNorm right after a module, and the branch's
   layer scale, become a per-channel ``y * scale + shift`` folded into the module's *output layer*; the BatchNorm
   and the LayerScale are then dropped from the branch.
3. **Conv -> BatchNorm anywhere** (stems, downsamplers, inside components): folded into the conv.

The output layer of a module is found in one of two ways: the module's own ``absorb_affine(scale, shift)``
(components that know best, see components/common/reparam.py), or by tracing the module with torch.fx (its children as
leaves) and walking back from its output through Dropout/Identity/DropPath and channel-preserving
``einops.rearrange`` calls to an ``nn.Linear`` or ``nn.Conv2d`` (recursing into custom children), checking on the
way that no intermediate value has another user and that the layer runs once. Anything else is left as it is.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, fx, nn

_PASS_THROUGH = (nn.Dropout, nn.Identity)


@torch.no_grad()
def deploy(model: nn.Module, *, example: Tensor | None = None, atol: float = 1e-4,
           channels_last: bool = False) -> nn.Module:
    """Fold ``model`` in place into its inference form (see the module doc); returns it, in eval mode.

    With ``example`` (an input batch), checks that the outputs before and after agree within ``atol`` and
    raises ``AssertionError`` naming the largest difference otherwise. ``channels_last=True`` also stores the
    4-D weights channels-last (``torch.channels_last``), which speeds up conv-heavy models on CPU (oneDNN):
    measured 1.11x for resnet50, 1.16x for poolformer_s12, 1.02x for convnext_atto at batch 8 (benchmarks/RESULTS.md).
    """
    model.eval()
    reference = copy.deepcopy(model) if example is not None else None
    counts = {"reparameterized": 0, "bn_folded": 0, "layer_scale_folded": 0}
    from metablocks.blocks import Block

    targets = [m for m in model.modules()
               if m is not model and callable(getattr(m, "reparameterize", None)) and not getattr(m, "_deploy_root", False)]
    for module in targets:  # collected first: reparameterizing replaces submodules
        module.reparameterize()
        counts["reparameterized"] += 1
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        bn, ls = fold_block(block)
        counts["bn_folded"] += bn
        counts["layer_scale_folded"] += ls
    for module in [m for m in model.modules() if not isinstance(m, Block)]:
        counts["bn_folded"] += fold_conv_bn(module)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.deploy_counts = counts  # type: ignore[assignment]
    if reference is not None:
        diff = (reference(example) - model(example)).abs().max().item()
        assert diff <= atol, f"deploy changed the outputs: max abs difference {diff:.2e} > {atol:.0e}"
    return model


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_mean is not None


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) with BN(y) = y * scale + shift per channel in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_block(block: nn.Module) -> tuple[int, int]:
    """Fold BatchNorms and the layer scale of each of ``block``'s branches into the module before them.

    Returns (BatchNorms folded, layer scales folded). The block's branch records are rewritten without them.
    """
    modules = block._modules
    new_branches, n_bn, n_ls = [], 0, 0
    for branch in block._branches:
        steps = list(branch.steps)
        i = 1
        while i < len(steps):
            (before, _), (name, perm) = steps[i - 1], steps[i]
            if perm is None and _is_bn(modules[name]):
                scale, shift = bn_affine(modules[name])
                after = steps[i + 1][0] if i + 1 < len(steps) else None
                if (fold_affine(modules[before], scale, shift, channel_axis=_axis(block, before))
                        or (after is not None and fold_affine_into_input(modules[after], scale, shift,
                                                                         channel_axis=_axis(block, after)))):
                    delattr(block, name)
                    del steps[i]
                    n_bn += 1
                    continue
            i += 1
        layer_scale = branch.layer_scale
        if layer_scale is not None:
            last = steps[-1][0]
            if fold_affine(modules[last], modules[layer_scale].scale, None, channel_axis=_axis(block, last)):
                delattr(block, layer_scale)
                layer_scale = None
                n_ls += 1
        new_branches.append(replace(branch, steps=tuple(steps), layer_scale=layer_scale))
    block._branches = tuple(new_branches)
    return n_bn, n_ls


def _axis(block: nn.Module, name: str) -> int:
    """The channel axis of the output of step ``name`` of ``block`` (4-D): 3 channels-last, 1 channels-first."""
    from metablocks.layout import resolve

    component = getattr(block.config, "norm" if name.startswith("norm") else name, None)
    layout = resolve(type(component).layout, block.layout) if component is not None else block.layout
    return 3 if layout == "channels_last" else 1


# ------------------------------------------------------------------------------------------------ folding an affine
@torch.no_grad()
def fold_affine(module: nn.Module, scale: Tensor, shift: Tensor | None, *, channel_axis: int = 1) -> bool:
    """Make ``module(x)`` compute ``module(x) * scale + shift`` (per channel on ``channel_axis`` of its 4-D output).

    Returns False (changing nothing) when no output layer can be found; see the module doc.
    """
    target = find_output_layer(module, channel_axis=channel_axis, ndim=4)
    if target is None:
        return False
    if isinstance(target, (nn.Linear, nn.Conv2d)):
        _scale_layer(target, scale, shift)
    else:
        target.absorb_affine(scale, shift)
    return True


def _scale_layer(layer: nn.Linear | nn.Conv2d, scale: Tensor, shift: Tensor | None) -> None:
    scale = scale.to(layer.weight)
    layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.ndim - 1))))
    if layer.bias is not None:
        layer.bias.mul_(scale)
    if shift is not None:
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(scale))
        layer.bias.add_(shift.to(layer.bias))


def find_output_layer(module: nn.Module, *, channel_axis: int, ndim: int) -> nn.Module | None:
    """The layer (a Linear, a Conv2d, or a module with ``absorb_affine``) whose per-channel output scale equals
    scaling ``module``'s output on ``channel_axis`` of its ``ndim``-D output; None when there is none."""
    if isinstance(module, nn.Linear):
        return module if channel_axis in (-1, ndim - 1) else None
    if isinstance(module, nn.Conv2d):
        return module if channel_axis == 1 and ndim == 4 else None
    if callable(getattr(module, "absorb_affine", None)):
        return module
    graph = _trace(module)
    if graph is None:
        return None
    out = [n for n in graph.nodes if n.op == "output"][0]
    node = out.args[0]
    axis, dims = channel_axis, ndim
    while isinstance(node, fx.Node) and len(node.users) == 1:
        if node.op == "call_module":
            child = module.get_submodule(node.target)
            if sum(1 for n in graph.nodes if n.op == "call_module" and n.target == node.target) != 1:
                return None  # the layer runs more than once: scaling it would change the other calls too
            if isinstance(child, _PASS_THROUGH) or type(child).__name__ == "DropPath":
                node = node.args[0]
                continue
            return find_output_layer(child, channel_axis=axis, ndim=dims)
        if node.op == "call_method" and node.target in ("flatten", "unflatten"):
            moved = _through_leading_reshape(node, axis, dims)
            if moved is None:
                return None
            axis, dims = moved
            node = node.args[0]
            continue
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "rearrange":
            moved = _through_rearrange(node, axis, dims)
            if moved is None:
                return None
            axis, dims = moved
            node = node.args[0]
            continue
        return None
    return None


def _through_rearrange(node: fx.Node, axis: int, ndim: int) -> tuple[int, int] | None:
    """The (axis, ndim) before ``rearrange(x, pattern)`` that becomes ``axis`` of its ``ndim``-D output, if a plain axis."""
    pattern = node.args[1] if len(node.args) > 1 else node.kwargs.get("pattern")
    if not isinstance(pattern, str) or "..." in pattern:
        return None
    left, _, right = pattern.partition("->")
    lhs, rhs = _axes(left), _axes(right)
    if lhs is None or rhs is None or len(rhs) != ndim:
        return None
    name = rhs[axis % ndim]
    if name is None or name not in lhs:
        return None
    return lhs.index(name), len(lhs)


def _through_leading_reshape(node: fx.Node, axis: int, ndim: int) -> tuple[int, int] | None:
    """(axis, ndim) before ``x.flatten(start, end)`` / ``x.unflatten(dim, sizes)`` that leave the last axis alone, when
    ``axis`` is that last axis (the channel axis of a channels-last map: attention's "b (h w) c -> b h w c")."""
    if axis % ndim != ndim - 1:
        return None
    args = list(node.args[1:])
    if node.target == "unflatten" and len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], (tuple, list)):
        before = ndim - len(args[1]) + 1
        return (before - 1, before) if args[0] % before != before - 1 else None
    if node.target == "flatten" and len(args) == 2 and all(isinstance(a, int) for a in args) and args[1] >= 0:
        before = ndim + args[1] - args[0]
        return (before - 1, before) if args[1] != before - 1 else None
    return None


def _axes(side: str) -> list[str | None] | None:
    """Axis names of one side of an einops pattern; a group ``(h w)`` is one axis named None."""
    out: list[str | None] = []
    depth = 0
    for token in side.replace("(", " ( ").replace(")", " ) ").split():
        if token == "(":
            depth += 1
            if depth == 1:
                out.append(None)
        elif token == ")":
            depth -= 1
        elif depth == 0:
            out.append(token)
    return out if depth == 0 else None


@torch.no_grad()
def fold_affine_into_input(module: nn.Module, scale: Tensor, shift: Tensor, *, channel_axis: int = 1) -> bool:
    """Make ``module(x)`` compute ``module(x * scale + shift)``, folding the affine into its input layer.

    The input layer is the one layer the input goes straight to (through Dropout/Identity): a Linear, or an
    unpadded Conv2d with groups=1 (with zero padding the shift would wrongly reach the border). False if none.
    """
    layer = find_input_layer(module, channel_axis=channel_axis)
    if layer is None:
        return False
    scale, shift = scale.to(layer.weight), shift.to(layer.weight)
    weight = layer.weight  # Linear (out, in); Conv2d (out, in, kh, kw)
    projected = (weight.flatten(2).sum(2) if weight.ndim == 4 else weight) @ shift  # (out,)
    weight.mul_(scale.reshape(1, -1, *([1] * (weight.ndim - 2))))
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(projected))
    layer.bias.add_(projected)
    return True


def find_input_layer(module: nn.Module, *, channel_axis: int) -> nn.Linear | nn.Conv2d | None:
    """The Linear/Conv2d that ``module``'s 4-D input goes straight into, if an affine on its input folds into it."""
    if isinstance(module, nn.Linear):
        return module if channel_axis in (-1, 3) else None
    if isinstance(module, nn.Conv2d):
        unpadded = all(p == 0 for p in module.padding) if not isinstance(module.padding, str) else module.kernel_size == (1, 1)
        return module if channel_axis == 1 and module.groups == 1 and unpadded else None
    graph = _trace(module)
    if graph is None:
        return None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if not inputs:
        return None
    node = inputs[0]
    while len(node.users) == 1:
        (user,) = node.users
        if user.op != "call_module" or user.args[:1] != (node,):
            return None
        if sum(1 for n in graph.nodes if n.op == "call_module" and n.target == user.target) != 1:
            return None
        child = module.get_submodule(user.target)
        if isinstance(child, _PASS_THROUGH):
            node = user
            continue
        return find_input_layer(child, channel_axis=channel_axis)
    return None


class _ChildrenAsLeaves(fx.Tracer):
    """Trace one module's forward only: every submodule call is a leaf, einops.rearrange a leaf function."""

    def __init__(self) -> None:
        import einops

        super().__init__(autowrap_functions=(einops.rearrange,))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _trace(module: nn.Module) -> fx.Graph | None:
    if type(module).forward is nn.Module.forward:
        return None
    try:
        return _ChildrenAsLeaves().trace(module)
    except Exception:  # data-dependent control flow and the like: nothing to fold here
        return None


# ------------------------------------------------------------------------------------------------ conv -> BN anywhere
@torch.no_grad()
def fold_conv_bn(module: nn.Module) -> int:
    """Fold every eval BatchNorm2d child of ``module`` that directly follows a Conv2d child (its only user)."""
    if not any(_is_bn(child) for child in module.children()):
        return 0
    graph = _trace(module)
    if graph is None:
        return 0
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or "." in node.target:
            continue
        bn = module.get_submodule(node.target)
        src = node.args[0] if node.args else None
        if not (_is_bn(bn) and isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and calls[src.target] == 1 and "." not in src.target):
            continue
        conv = module.get_submodule(src.target)
        if isinstance(conv, nn.Conv2d):
            _scale_layer(conv, *bn_affine(bn))
            setattr(module, node.target, nn.Identity())
            folded += 1
    return folded


def deploy_copy(model: nn.Module, **kwargs: Any) -> nn.Module:
    """A deployed deep copy, leaving ``model`` as it is."""
    return deploy(copy.deepcopy(model), **kwargs)
