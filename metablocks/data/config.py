"""Data settings (pydantic): which source, where, at what size, how it is read, and how to augment."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer


class StableDump(BaseModel):
    """A settings model whose dump leaves out the fields listed in ``added`` while they hold their defaults.

    A sweep's run id is a hash of the dumped settings, so a field added in a later version must not change the dump
    of a spec that does not use it: existing sweep directories keep resuming, and the digits demo keeps its run ids.
    """

    added: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_added_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        for name in self.added:
            if name in out and getattr(self, name) == type(self).model_fields[name].default:
                del out[name]
        return out


class AugmentConfig(BaseModel):
    """Train-time augmentation for the small bundled sets, applied to whole uint8 batches in torch.

    With a timm transform (``train.transform`` or ``train.recipe``), timm's per-image pipeline replaces these.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_padding: int = Field(2, ge=0)  # random translation by up to this many pixels (pad, then random crop)
    hflip: bool = False  # random horizontal flips (off by default: digits are not mirror-symmetric)
    noise: float = Field(0.0, ge=0.0)  # std of Gaussian noise added after normalization


class DataConfig(StableDump):
    """Which images to train and evaluate on, and how they are read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    added: ClassVar[tuple[str, ...]] = ("loader", "workers", "pin_memory", "persistent_workers", "prefetch_factor",
                                        "mean", "std")

    source: str = "digits"
    path: str | None = None  # the local directory of imagefolder / cifar10 / cifar100
    img_size: int = Field(32, ge=4)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # held-out share, where the source has no split of its own
    split_seed: int = 0  # the train/val split does not change with the training seed
    limit_train: int | None = Field(None, ge=1)  # keep only the first N training images (quick runs)
    limit_val: int | None = Field(None, ge=1)
    augment: AugmentConfig = AugmentConfig()
    # synthetic source only
    num_classes: int = Field(10, ge=2)
    train_size: int = Field(512, ge=1)
    val_size: int = Field(256, ge=1)
    channels: int = Field(3, ge=1)
    # how the images are read: "memory" decodes the whole split once into a uint8 tensor (the small bundled sets);
    # "stream" reads every image from disk in DataLoader workers at each epoch (memory does not grow with the
    # dataset); "auto" streams the sources that can (imagefolder) and keeps the others in memory
    loader: Literal["auto", "memory", "stream"] = "auto"
    workers: int = Field(2, ge=0)  # DataLoader worker processes (streaming, or a timm transform on in-memory data)
    pin_memory: bool | None = None  # page-locked batches for faster host-to-GPU copies; null: on CUDA only
    persistent_workers: bool = True  # keep the workers between epochs (no start-up cost per epoch)
    prefetch_factor: int = Field(2, ge=1)  # batches each worker prepares ahead
    # normalization for streamed images (there is no pass over the data to measure them); null: ImageNet's
    # (timm.data.IMAGENET_DEFAULT_MEAN / STD). In-memory sources use their training images' own statistics.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @field_validator("source")
    @classmethod
    def _known(cls, value: str) -> str:
        from metablocks.data.sources import SOURCES
        from metablocks.registry import did_you_mean

        if value not in SOURCES:
            raise ValueError(f"unknown data source {value!r}{did_you_mean(value, sorted(SOURCES))}; "
                             f"allowed: {', '.join(sorted(SOURCES))}")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and min(value) <= 0:
            raise ValueError(f"std must be positive per channel, given {list(value)}")
        return value


class TransformConfig(BaseModel):
    """timm's per-image training transform (``timm.data.create_transform(is_training=True)``): random-resized
    crop, flips, RandAugment / AutoAugment or colour jitter, random erasing; and the evaluation resize + centre crop.

    Each image's random draws are seeded by (training seed, epoch, image index), so a run is the same with any number
    of DataLoader workers or data-parallel processes, and a resumed run continues exactly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range (share of the image)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop aspect-ratio range
    hflip: float = Field(0.5, ge=0, le=1)  # probability of a horizontal flip
    vflip: float = Field(0.0, ge=0, le=1)
    color_jitter: float | None = Field(0.4, ge=0)  # brightness/contrast/saturation; timm turns it off under RandAugment
    # "rand-m9-mstd0.5-inc1" (RandAugment), "original" / "v0" (AutoAugment), "augmix-m5-w3" (AugMix)
    auto_augment: str | None = None
    interpolation: Literal["bilinear", "bicubic", "random"] = "bilinear"
    re_prob: float = Field(0.0, ge=0, le=1)  # random erasing probability (after normalization)
    re_mode: Literal["const", "rand", "pixel"] = "const"
    re_count: int = Field(1, ge=1)
    crop_pct: float = Field(0.875, gt=0, le=1)  # evaluation of streamed images: resize to img_size / crop_pct, crop

    @field_validator("auto_augment")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

        build = (rand_augment_transform if value.startswith("rand") else
                 augment_and_mix_transform if value.startswith("augmix") else auto_augment_transform)
        try:
            build(value, {"translate_const": 10, "img_mean": (124, 116, 104)})
        except Exception as err:  # timm asserts or raises on an unknown policy string
            raise ValueError(f"auto_augment {value!r} is not a timm policy ({type(err).__name__}: {err}); allowed: "
                             f"'rand-m<magnitude>[-mstd<std>][-n<ops>][-inc1]' (RandAugment), 'original', 'originalr', "
                             f"'v0', 'v0r' (AutoAugment), 'augmix-m<magnitude>-w<width>'") from None
        return value


class MixupConfig(BaseModel):
    """Mixup / CutMix on each training batch (``timm.data.Mixup``); targets become soft, smoothed by the training
    ``label_smoothing``, and the loss is soft-target cross-entropy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixup_alpha: float = Field(0.8, ge=0)  # Beta(alpha, alpha) of the mixing weight; 0: no Mixup
    cutmix_alpha: float = Field(1.0, ge=0)  # 0: no CutMix
    cutmix_minmax: tuple[float, float] | None = None  # CutMix box size bounds (then cutmix_alpha is 1)
    prob: float = Field(1.0, ge=0, le=1)  # share of batches mixed at all
    switch_prob: float = Field(0.5, ge=0, le=1)  # with both on: share of mixed batches that use CutMix
    mode: Literal["batch", "pair", "elem"] = "batch"  # one draw per batch, per pair or per image

    @field_validator("cutmix_alpha")
    @classmethod
    def _something(cls, value: float, info: Any) -> float:
        if value == 0 and info.data.get("mixup_alpha") == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing would be mixed (leave mixup out)")
        return value
