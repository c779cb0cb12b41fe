"""Optimizer and schedule: AdamW (or any timm optimizer) without weight decay on 1-D parameters; linear warmup then
cosine decay, stepped per optimizer step."""
from __future__ import annotations

import inspect

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


def peak_lr(config: TrainConfig, global_batch: int) -> float:
    """``lr``, scaled linearly from ``lr_base_size`` to the real global batch when that is given (DeiT's rule)."""
    return config.lr * global_batch / config.lr_base_size if config.lr_base_size else config.lr


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """torch's AdamW for ``opt: adamw``; any other name through ``timm.optim.create_optimizer_v2`` (the same
    parameter groups; ``betas`` passed where the optimizer takes them)."""
    lr = config.lr if lr is None else lr
    groups = param_groups(model, config.weight_decay)
    if config.opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas)
    from timm.optim import create_optimizer_v2, get_optimizer_class

    extra = {}
    if "betas" in inspect.signature(get_optimizer_class(config.opt, bind_defaults=False)).parameters:
        extra["betas"] = config.betas
    return create_optimizer_v2(groups, opt=config.opt, lr=lr, weight_decay=config.weight_decay, **extra)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int,
                   lr: float | None = None) -> LRScheduler:
    """Stepped once per optimizer step: ``warmup_epochs`` of linear warmup from ``warmup_lr`` (default lr/100) to
    the peak ``lr``, then cosine to ``min_lr``."""
    lr = config.lr if lr is None else lr
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    cosine = CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=config.min_lr)
    if warmup == 0:
        return cosine
    start = 0.01 if config.warmup_lr is None else min(max(config.warmup_lr / lr, 1e-8), 1.0)
    ramp = LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
