"""Helpers shared by several test files (imported as ``from helpers import ...``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch
from torch import nn

import metablocks

SIZES = (64, 96, 112, 224)


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
