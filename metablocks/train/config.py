"""Training and measurement settings (pydantic), shared by ``metablocks train`` and sweeps.

``recipe: deit`` fills every field it names with the DeiT / MetaFormer ImageNet settings (``RECIPES``; the sources
are in docs/training.md); fields given beside it win.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metablocks.data.config import MixupConfig, StableDump, TransformConfig

# DeiT (Touvron et al. 2021, "Training data-efficient image transformers", Table 9; the defaults of
# facebookresearch/deit main.py), the recipe the MetaFormer papers (PoolFormer, MetaFormer Baselines) train with.
DEIT: dict[str, Any] = {
    "epochs": 300, "lr": 5e-4, "lr_base_size": 512, "min_lr": 1e-5, "warmup_lr": 1e-6, "warmup_epochs": 5,
    "weight_decay": 0.05, "opt": "adamw", "betas": (0.9, 0.999), "label_smoothing": 0.1, "clip_grad": None,
    "drop_path": 0.1,
    "transform": {"auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "color_jitter": 0.4,
                  "re_prob": 0.25, "re_mode": "pixel", "re_count": 1, "scale": (0.08, 1.0), "hflip": 0.5,
                  "crop_pct": 0.875},
    "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "mode": "batch"},
    "ema": {"decay": 0.99996},
}
RECIPES: dict[str, dict[str, Any]] = {"deit": DEIT}


class EmaConfig(BaseModel):
    """An exponential moving average of the weights (``timm.utils.ModelEmaV3``), evaluated beside the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decay: float = Field(0.9998, gt=0, lt=1)
    warmup: bool = False  # timm's decay warm-up (1 - (1 + step) ** -2/3, capped at decay): for short runs


class TrainConfig(StableDump):
    """How one model is trained: optimizer, warmup then cosine decay, regularization, devices and precision."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    added: ClassVar[tuple[str, ...]] = ("recipe", "lr_base_size", "warmup_lr", "opt", "drop_path", "transform",
                                        "mixup", "ema", "channels_last", "compile", "track", "log_every")

    recipe: Literal["deit"] | None = None  # a preset of the fields below (see RECIPES); explicit fields win
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)  # per process; the global batch is batch_size * world size
    lr: float = Field(2e-3, gt=0)
    lr_base_size: int | None = Field(None, ge=1)  # lr is for this global batch, scaled linearly to the real one
    min_lr: float = Field(1e-5, ge=0)
    weight_decay: float = Field(0.05, ge=0)  # not applied to norms, biases and scales (1-D parameters)
    opt: str = "adamw"  # "adamw": torch's AdamW; any other name is built by timm.optim.create_optimizer_v2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(1.0, ge=0)
    warmup_lr: float | None = Field(None, ge=0)  # where the linear warmup starts; null: lr / 100
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad: float | None = Field(1.0, gt=0)  # max global gradient norm; null: no clipping
    drop_path: float | None = Field(None, ge=0, lt=1)  # stochastic depth rate (the recipe's drop_path_rate)
    transform: TransformConfig | None = None  # timm's per-image augmentation; null: data.augment on whole batches
    mixup: MixupConfig | None = None  # Mixup / CutMix
    ema: EmaConfig | None = None  # weight EMA
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16) autocast on CUDA, off on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    channels_last: bool = False  # model and batches in channels-last memory format (faster convs on CUDA)
    compile: bool = False  # torch.compile the model
    seed: int = 0
    deterministic: bool = True  # deterministic kernels (always on CPU; on CUDA as far as torch allows)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; null: torch's default
    eval_batch_size: int = Field(256, ge=1)
    # experiment tracking beside the JSONL store: TensorBoard event files in <out>/tensorboard (needs the
    # tensorboard package); "mlflow" (a file store in <out>/mlruns) and "wandb" (offline, in <out>/wandb) if installed
    track: tuple[Literal["tensorboard", "mlflow", "wandb"], ...] = ("tensorboard",)
    log_every: int = Field(50, ge=1)  # steps between logged training losses

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("recipe") is None:
            return data
        preset = RECIPES.get(data["recipe"])
        if preset is None:  # let the Literal report it
            return data
        merged = {**preset, **data}
        for key in ("transform", "mixup", "ema"):  # nested settings merge field by field
            given = data.get(key)
            if isinstance(given, dict):
                merged[key] = {**preset[key], **given}
            elif isinstance(given, BaseModel):
                merged[key] = {**preset[key], **given.model_dump(exclude_unset=True)}
        return merged

    @field_validator("opt")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value == "adamw":
            return value
        from timm.optim import list_optimizers

        from metablocks.registry import did_you_mean

        names = list_optimizers()
        if value.lower() not in names:
            raise ValueError(f"unknown optimizer {value!r}{did_you_mean(value, names)}; allowed: adamw or a timm "
                             f"optimizer ({', '.join(names[:12])}, ...)")
        return value.lower()

    @field_validator("track", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class MeasureConfig(BaseModel):
    """What is measured on each trained model besides accuracy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(64, ge=1)  # "batch N" of the throughput/latency measurements
    warmup: int = Field(2, ge=0)  # untimed iterations before timing
    iters: int = Field(5, ge=1)  # timed iterations (the median is reported)
    speed: bool = True  # measure inference throughput / latency (and, in sweeps, training-step throughput)
    rounds: int = Field(5, ge=1)  # sweeps: times each model is timed, alternating with the sweep's reference model
