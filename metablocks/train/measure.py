"""Per-model measurements: parameters, MACs, inference throughput/latency (batch 1 and batch N), training memory.

``measure_model`` measures one model as it is (``metablocks train --measure``). Sweeps time their models with
``measure_against`` instead, after all training is done, one model at a time: each of ``rounds`` rounds times the
sweep's reference model and then the model, so the record holds the median, the min-max spread over the rounds and
the median ratio to the reference of the same round (which cancels slow drifts of the machine's speed).
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from metablocks.train.config import MeasureConfig


def count_params(model: nn.Module) -> int:
    from metablocks.analysis import count_params as analysis_params

    return analysis_params(model)


def count_macs(model: nn.Module, img_size: int, in_chans: int) -> int:
    """Multiply-accumulates of one image's forward pass (metablocks.analysis, fvcore with our op handles)."""
    from metablocks.analysis import count_macs as analysis_macs

    return int(analysis_macs(model, (in_chans, img_size, img_size)).total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_speed(model: nn.Module, batch: int, img_size: int, in_chans: int, config: MeasureConfig,
                    device: torch.device, autocast: dict[str, Any] | None = None) -> dict[str, float]:
    """Median latency (ms) of a forward pass of ``batch`` images and the throughput (images/s) it implies."""
    model.eval()
    x = torch.randn(batch, in_chans, img_size, img_size, device=device)
    times = []
    with torch.autocast(**autocast) if autocast else _null():
        for i in range(config.warmup + config.iters):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= config.warmup:
                times.append(time.perf_counter() - start)
    latency = statistics.median(times)
    return {"latency_ms": latency * 1000, "throughput": batch / latency}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def train_memory(model: nn.Module, batch: int, img_size: int, in_chans: int, num_classes: int,
                 device: torch.device) -> dict[str, Any]:
    """Peak memory (MiB) of one AdamW training step at ``batch``.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU has no allocator statistics, so it is the sum of what the step
    must hold at its peak: parameters, gradients, AdamW's two moments and every tensor saved for the backward pass
    (counted through ``saved_tensors_hooks``, each storage once).
    """
    model.train()
    x = torch.randn(batch, in_chans, img_size, img_size, device=device)
    y = torch.randint(num_classes, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        optimizer = torch.optim.AdamW(model.parameters())
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20, "mem_method": "cuda_max_allocated"}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations = sum(n for (ptr, _), n in seen.items() if ptr not in params)
    return {"peak_mem_mb": (4 * param_bytes + activations) / 2**20, "activation_mem_mb": activations / 2**20,
            "mem_method": "params+grads+adamw+saved_activations"}


def measure_model(model: nn.Module, *, img_size: int, in_chans: int, num_classes: int, config: MeasureConfig,
                  device: torch.device, autocast: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every per-model number of a sweep row (accuracy aside)."""
    out: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, img_size, in_chans)}
    if config.speed:
        for batch, tag in ((1, "b1"), (config.batch_size, "bN")):
            speed = inference_speed(model, batch, img_size, in_chans, config, device, autocast)
            out[f"latency_{tag}_ms"], out[f"throughput_{tag}"] = speed["latency_ms"], speed["throughput"]
        out["measure_batch"] = config.batch_size
    out.update(train_memory(model, config.batch_size, img_size, in_chans, num_classes, device))
    return out


def static_measures(model: nn.Module, img_size: int, in_chans: int) -> dict[str, int]:
    """The numbers no other process can disturb: parameters and MACs."""
    return {"params": count_params(model), "macs": count_macs(model, img_size, in_chans)}


def train_speed(model: nn.Module, batch: int, img_size: int, in_chans: int, num_classes: int,
                config: MeasureConfig, device: torch.device, autocast: dict[str, Any] | None = None) -> float:
    """Images/s of AdamW training steps at ``batch`` (median step time), on a copy: the model keeps its weights."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, in_chans, img_size, img_size, device=device)
    y = torch.randint(num_classes, (batch,), device=device)
    times = []
    for i in range(config.warmup + config.iters):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(**autocast) if autocast else _null():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i >= config.warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _spread(name: str, mine: list[float], reference: list[float]) -> dict[str, float]:
    ratios = [m / r for m, r in zip(mine, reference)]
    return {name: statistics.median(mine), f"{name}_min": min(mine), f"{name}_max": max(mine),
            f"{name}_ratio": statistics.median(ratios), f"{name}_ratio_min": min(ratios),
            f"{name}_ratio_max": max(ratios), f"reference_{name}": statistics.median(reference)}


def measure_against(model: nn.Module, reference: nn.Module, *, img_size: int, in_chans: int, num_classes: int,
                    config: MeasureConfig, device: torch.device,
                    autocast: dict[str, Any] | None = None) -> dict[str, Any]:
    """Speed (inference at batch 1 and N, training steps at N) of ``model`` timed in ``config.rounds`` rounds,
    each right after the same timing of ``reference``; then its training memory. Throughputs are the median over
    the rounds with ``_min``/``_max`` (the spread) and ``_ratio`` (model / reference, per round, median)."""
    out: dict[str, Any] = {}
    if config.speed:
        timings: dict[str, tuple[list[float], list[float]]] = {}
        for _ in range(config.rounds):
            for batch, tag in ((1, "b1"), (config.batch_size, "bN")):
                pair = timings.setdefault(f"throughput_{tag}", ([], []))
                pair[1].append(inference_speed(reference, batch, img_size, in_chans, config, device,
                                               autocast)["throughput"])
                pair[0].append(inference_speed(model, batch, img_size, in_chans, config, device,
                                               autocast)["throughput"])
            pair = timings.setdefault("train_throughput", ([], []))
            pair[1].append(train_speed(reference, config.batch_size, img_size, in_chans, num_classes, config, device,
                                       autocast))
            pair[0].append(train_speed(model, config.batch_size, img_size, in_chans, num_classes, config, device,
                                       autocast))
        for name, (mine, theirs) in timings.items():
            out.update(_spread(name, mine, theirs))
        out["latency_b1_ms"] = 1000 / out["throughput_b1"]
        out["latency_bN_ms"] = 1000 * config.batch_size / out["throughput_bN"]
        out["measure_batch"], out["rounds"] = config.batch_size, config.rounds
    out.update(train_memory(model, config.batch_size, img_size, in_chans, num_classes, device))
    return out
