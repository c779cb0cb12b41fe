"""Data settings (pydantic): which source, where, at what size, and how to augment."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AugmentConfig(BaseModel):
    """Train-time augmentation, applied to whole batches in torch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_padding: int = Field(2, ge=0)  # random translation by up to this many pixels (pad, then random crop)
    hflip: bool = False  # random horizontal flips (off by default: digits are not mirror-symmetric)
    noise: float = Field(0.0, ge=0.0)  # std of Gaussian noise added after normalization


class DataConfig(BaseModel):
    """Which images to train and evaluate on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    @field_validator("source")
    @classmethod
    def _known(cls, value: str) -> str:
        from metablocks.data.sources import SOURCES
        from metablocks.registry import did_you_mean

        if value not in SOURCES:
            raise ValueError(f"unknown data source {value!r}{did_you_mean(value, sorted(SOURCES))}; "
                             f"allowed: {', '.join(sorted(SOURCES))}")
        return value
