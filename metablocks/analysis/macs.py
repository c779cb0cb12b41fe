"""Multiply-accumulate counts (MACs) with fvcore, plus handles for the ops fvcore skips or miscounts.

fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop": its numbers are MACs, and so
are ours (papers that say "FLOPs" for these numbers mean MACs too). We add handles for

* ``aten::scaled_dot_product_attention`` (fvcore skips it): two batched matmuls, QK^T and AV,
  ``B * heads * Nq * Nk * (d_qk + d_v)`` MACs;
* ``aten::einsum``: the exact count of the contraction (fvcore halves contractions that sum over no index,
  e.g. an outer product, and allocates every operand to ask numpy for a path);
* ``aten::matmul``, ``aten::mm``, ``aten::bmm``: any broadcasting (fvcore's handle asserts on a batched
  right-hand side or a vector), ``out.numel() * K``;
* ``aten::baddbmm``, ``aten::addbmm`` (fvcore skips them): ``b * n * m * p``.

Like fvcore, and like the papers whose numbers we reproduce, we do NOT count, and report in
``MacReport.skipped_ops``: elementwise arithmetic (add, sub, mul, div, pow, square, neg, exp, rsqrt, ...,
so layer/res scales and residual sums), activations (gelu, relu, silu, sigmoid, tanh, softmax), pooling
and reductions (avg/max pooling, mean, sum, amax, linalg_vector_norm as in GRN), and FFTs; data movement
(permute, reshape, roll, cat, pad) costs nothing. fvcore's own conventions stay: a norm is 5 MACs per element (4 without affine
parameters; inference BatchNorm 2), adaptive average pooling 1 per input element.
"""
from __future__ import annotations

import logging
import math
import string
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metablocks.analysis.params import parts
from metablocks.analysis.units import human


def _shape(value: Any) -> list[int]:
    """The static shape of a traced tensor value."""
    return list(value.type().sizes())


def _prod(values: Any) -> int:
    return math.prod(int(v) for v in values)


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """scaled_dot_product_attention(q, k, v): QK^T then AV, ``B * heads * Nq * Nk * (d_qk + d_v)``.

    The batch and heads come from the output (q's, after broadcasting and grouped-query expansion);
    the softmax, scaling and mask are elementwise and not counted.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    out = _shape(outputs[0])  # (..., Nq, d_v)
    return _prod(out[:-1]) * k[-2] * (q[-1] + v[-1])


def matmul_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """a @ b with numpy broadcasting: every output element is a K-long dot product."""
    return _prod(_shape(outputs[0])) * _shape(inputs[0])[-1]


def batched_addmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """baddbmm / addbmm(input, batch1 (b, n, m), batch2 (b, m, p)): ``b * n * m * p``."""
    return _prod(_shape(inputs[1])) * _shape(inputs[2])[-1]


def einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """MACs of ``torch.einsum(equation, *operands)`` with operands of ``shapes``.

    One operand (a sum, a transpose, a diagonal) costs nothing; two cost the product of the sizes of all
    their indices (each output element is a sum of products over the contracted indices); more are
    contracted pairwise along numpy's optimal path, each pair costing the same way.
    """
    terms, output, sizes = _parse_einsum(equation, shapes)
    if len(terms) == 1:
        return 0
    if len(terms) == 2:
        return _prod(sizes[c] for c in set(terms[0]) | set(terms[1]))
    import numpy as np

    operands = [np.broadcast_to(np.zeros(()), [sizes[c] for c in term]) for term in terms]  # shapes only, no memory
    path = np.einsum_path(",".join(terms) + "->" + output, *operands, optimize="optimal")[0][1:]
    current, macs = [set(t) for t in terms], 0
    for step in path:
        picked = [current[i] for i in step]
        current = [t for i, t in enumerate(current) if i not in step]
        letters = set().union(*picked)
        macs += _prod(sizes[c] for c in letters) * (len(picked) - 1)
        current.append({c for c in letters if c in output or any(c in t for t in current)})
    return macs


def _parse_einsum(equation: str, shapes: list[list[int]]) -> tuple[list[str], str, dict[str, int]]:
    """Terms and output with ``...`` spelled out as fresh letters, and the (broadcast) size of every letter."""
    equation = equation.replace(" ", "")
    lhs, explicit, output = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum {equation!r} has {len(terms)} operands, given {len(shapes)} shapes")
    spare = [c for c in string.ascii_letters if c not in equation]
    ellipsis = max((len(shape) - len(term) + 3 for term, shape in zip(terms, shapes) if "..." in term), default=0)
    fresh = "".join(spare[:ellipsis])
    terms = [t.replace("...", fresh[ellipsis - (len(s) - len(t) + 3):]) if "..." in t else t for t, s in zip(terms, shapes)]
    if explicit:
        output = output.replace("...", fresh)
    else:  # implicit mode: broadcast dims, then the indices that appear once, in alphabetical order
        counts = Counter("".join(terms))
        output = fresh + "".join(sorted(c for c in counts if counts[c] == 1 and c not in fresh))
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return terms, output, sizes


def einsum_jit_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::einsum(equation, [operands], path)``."""
    equation = inputs[0].toIValue()
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    return einsum_macs(equation, shapes)


HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_macs,
    "aten::einsum": einsum_jit_macs,
    "aten::matmul": matmul_macs,
    "aten::mm": matmul_macs,
    "aten::bmm": matmul_macs,
    "aten::baddbmm": batched_addmm_macs,
    "aten::addbmm": batched_addmm_macs,
}
"""The handles we add to (or replace in) fvcore's defaults."""


@dataclass
class MacReport:
    """MACs of one forward pass at ``input_size`` (batch 1): in total, per part, per operator."""

    total: int
    input_size: tuple[int, ...]
    by_stage: dict[str, int]  # stem, stages.0, ..., head (a MetaModel); top-level children otherwise
    by_operator: dict[str, int]  # conv, linear, scaled_dot_product_attention, layer_norm, ...
    by_module: dict[str, int] = field(repr=False)  # every submodule, "" for the whole model
    skipped_ops: dict[str, int] = field(default_factory=dict)  # ops not counted -> how many times they ran

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    def __str__(self) -> str:
        parts_ = ", ".join(f"{name} {human(macs)}" for name, macs in self.by_stage.items())
        return f"{human(self.total)} MACs at {'x'.join(map(str, self.input_size))} ({parts_})"


class _ChannelsFirst(nn.Module):
    """A channels-last block seen from outside as (B, C, H, W) in and out (the permutes cost no MACs)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _block_input(block: nn.Module, input_size: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """A Block takes the standard (C, H, W) whatever layout it runs in (one taken from a model may run (B, H, W, C));
    its own layout's (H, W, C) is accepted too."""
    dim, channels_last = block.dim, block.io_layout == "channels_last"
    if len(input_size) == 3 and input_size[0] == dim:
        return (_ChannelsFirst(block) if channels_last else block), tuple(input_size)
    if channels_last and len(input_size) == 3 and input_size[-1] == dim:
        return block, tuple(input_size)
    raise ValueError(f"count_macs: this block has width {dim}, so input_size is (C, H, W) = ({dim}, H, W)"
                     f"{f' (or its own layout, (H, W, {dim}))' if channels_last else ''}; got {tuple(input_size)}")


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> MacReport:
    """Trace ``model`` on a (1, *input_size) input and count its MACs (see the module doc for what counts).

    A Block (standalone or taken from a model) takes ``(C, H, W)`` as a model does, whatever layout it runs in.
    fvcore's warnings about ops it cannot count are silenced: those ops are in ``report.skipped_ops``.
    """
    with warnings.catch_warnings():  # importing fvcore makes torch warn that jit.script is deprecated
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
    from metablocks.blocks import Block

    traced, prefix = model, ""
    if isinstance(model, Block):
        traced, input_size = _block_input(model, input_size)
        prefix = "block." if traced is not model else ""

    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None and param.is_floating_point() else None)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(traced, x).set_op_handle(**HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logger = logging.getLogger("fvcore.nn.jit_analysis")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                by_module = dict(analysis.by_module())
                by_operator = dict(analysis.by_operator())
                skipped = dict(analysis.unsupported_ops())
        finally:
            logger.setLevel(level)
    finally:
        model.train(was_training)
    if prefix:  # names as in the block itself
        by_module = {("" if name == "block" else name.removeprefix(prefix)): macs for name, macs in by_module.items()
                     if name != ""}
    by_stage = {name: by_module.get(name, 0) for name, _ in parts(model)}
    rest = by_module[""] - sum(by_stage.values())
    if rest:
        by_stage["other"] = rest
    return MacReport(total=by_module[""], input_size=tuple(input_size), by_stage=by_stage, by_operator=by_operator,
                     by_module=by_module, skipped_ops=dict(sorted(skipped.items())))
