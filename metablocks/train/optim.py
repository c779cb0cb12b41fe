"""Optimizer and schedule: AdamW without weight decay on 1-D parameters; linear warmup then cosine decay per step."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from metablocks.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and conv kernels decay; norms' weights, biases and layer/res scales (ndim <= 1) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LRScheduler:
    """Stepped once per optimizer step: ``warmup_epochs`` of linear warmup from lr/100, then cosine to ``min_lr``."""
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    cosine = CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=config.min_lr)
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
