"""Helpers shared by several test files (imported as ``from helpers import ...``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch
from torch import nn

import metablocks

SIZES = (64, 96, 112, 224, 256)  # 256: HaloNets (every halo stage's map a multiple of 8)


def small_model(name: str) -> tuple[nn.Module, int]:
    """The recipe at the smallest input size its components accept, in eval mode."""
    for size in SIZES:
        try:
            return metablocks.create_model(name, img_size=size).eval(), size
        except metablocks.RecipeError:
            continue
    raise AssertionError(f"{name} builds at none of {SIZES}")


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a fused-vs-unfused check cannot pass by accident."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


TINY_RECIPE = """\
name: tiny
stem: {type: conv, kernel_size: 3, stride: 2, padding: 1}
downsample: {type: conv}
block: {norm: {type: groupnorm, num_groups: 1}}
stages:
  - {depth: 1, dim: 8}
  - {depth: 1, dim: 16}
"""


def tiny_sweep(name: str, rest: str, mixers: str = "pooling, identity") -> str:
    """A sweep spec over the token mixer of stage 1 of a two-stage 16-px model: ``name``, the tiny base, the mixer axis,
    then ``rest`` (seeds, data, train, measure: YAML lines at column 0)."""
    base = "".join(f"  {line}\n" for line in TINY_RECIPE.splitlines())
    axis = f'  - {{path: "stages[1].token_mixer", values: [{mixers}], name: mixer}}\n'
    return f"name: {name}\nbase:\n{base}axes:\n{axis}{rest}"


class Stop(Exception):
    """Raised by ``interrupt_at`` to kill a training run mid-epoch."""


def interrupt_at(step: int) -> type:
    """A ``make_progress`` class for ``train`` that raises Stop at the ``step``-th optimizer step (a killed run)."""

    class Interrupt:
        def __init__(self, *args) -> None:
            self.n = 0

        def step(self, loss) -> None:
            self.n += 1
            if self.n == step:
                raise Stop

        def epoch(self, *args) -> None:
            pass

        def close(self) -> None:
            pass

    return Interrupt
