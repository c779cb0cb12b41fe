"""Training and measurement settings (pydantic), shared by ``metablocks train`` and sweeps."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """How one model is trained: AdamW, linear warmup then cosine decay, label smoothing, clipping, autocast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)  # per process; the global batch is batch_size * world size
    lr: float = Field(2e-3, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    weight_decay: float = Field(0.05, ge=0)  # not applied to norms, biases and scales (1-D parameters)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad: float | None = Field(1.0, gt=0)  # max global gradient norm; null: no clipping
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16) autocast on CUDA, off on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    seed: int = 0
    deterministic: bool = True  # deterministic kernels (always on CPU; on CUDA as far as torch allows)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; null: torch's default
    eval_batch_size: int = Field(256, ge=1)


class MeasureConfig(BaseModel):
    """What is measured on each trained model besides accuracy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(64, ge=1)  # "batch N" of the throughput/latency measurements
    warmup: int = Field(2, ge=0)  # untimed iterations before timing
    iters: int = Field(5, ge=1)  # timed iterations (the median is reported)
    speed: bool = True  # measure inference throughput / latency (and, in sweeps, training-step throughput)
    rounds: int = Field(5, ge=1)  # sweeps: times each model is timed, alternating with the sweep's reference model
