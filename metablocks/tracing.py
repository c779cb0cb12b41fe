"""TorchScript and torch.fx support for modules whose forward walks a plan of submodule names.

A Block (and a Stage) runs a plan fixed at build time: which submodules, in which order, with which permutes. Eager
mode and ``torch.fx`` run that plan as written (FX unrolls it into straight-line code). TorchScript cannot look a
submodule up by a name held in a tuple, so ``torch.jit.script`` is handed the FX trace of such a module instead
(``__prepare_scriptable__``): the same submodules under the same names, called in the same order, each scripted
in its own right (they keep their own ``training`` switches); only the plan is unrolled.
"""
import copy

import torch
from torch import nn


@torch.jit.unused
def fx_tracing() -> bool:
    """True while torch.fx symbolically traces (shapes and strides are proxies then, not numbers)."""
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces only the root's own wiring: every submodule call stays one ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def unrolled(module: nn.Module, arg_types: dict | None = None) -> nn.Module:
    """``module`` as a GraphModule of its own wiring (its children called as they are), for TorchScript. An optional
    argument the plan does not use (a map block's token-stream ``hw``) is left out of the signature; ``arg_types``
    types the arguments TorchScript would take for tensors (a token block's ``hw``: ``Tuple[int, int]``)."""
    graph = _ChildrenAsLeaves().trace(module)
    types = arg_types or {}
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.target not in types and not node.users and node.args:  # unused, defaulted
            graph.erase_node(node)
    for node in graph.nodes:  # annotations as FX writes them are not TorchScript types; TorchScript infers Tensor
        node.type = types.get(node.target) if node.op == "placeholder" else None
        if node.op == "placeholder" and node.target in types:
            node.args = ()  # a typed argument is always given (a token stage passes its blocks hw)
    return torch.fx.GraphModule(module, graph, type(module).__name__)


def _preparable(module: nn.Module) -> bool:
    return hasattr(module, "__prepare_scriptable__")


def script_shell(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s container structure down to its preparable descendants, sharing every parameter.

    ``torch.jit.script`` swaps prepared children into their parents' ``_modules`` in place; scripting this shell
    instead leaves the eager model as it was (its parameters are still the scripted model's, as usual)."""
    def has_preparable(m: nn.Module) -> bool:
        return any(_preparable(c) or has_preparable(c) for c in m.children())

    def shell(m: nn.Module) -> nn.Module:
        if m is not module and _preparable(m) or not has_preparable(m):
            return m
        copied = copy.copy(m)
        copied.__dict__["_modules"] = {name: None if c is None else shell(c) for name, c in m._modules.items()}
        return copied

    return shell(module)
