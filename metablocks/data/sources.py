"""Data sources: each turns a DataConfig into ``Splits``, uint8 images (N, C, H, W) at ``img_size`` in memory.

Add a source with ``@source("name")`` on a function ``(config) -> Splits``.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # the config validates source names against SOURCES; this module needs its type only
    from metablocks.data.config import DataConfig

SOURCES: dict[str, Callable[[DataConfig], "Splits"]] = {}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Splits:
    """Train and validation images (uint8, (N, C, H, W)) with int64 labels, and the per-channel stats to normalize."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    classes: list[str]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.mean:  # statistics of the training images, in [0, 1] units
            pixels = self.train_x.transpose(0, 1).flatten(1).double() / 255  # (C, N*H*W)
            self.mean = tuple(pixels.mean(1).tolist())
            self.std = tuple(max(s, 1e-3) for s in pixels.std(1).tolist())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    def limited(self, train: int | None, val: int | None) -> Splits:
        return Splits(self.train_x[:train], self.train_y[:train], self.val_x[:val], self.val_y[:val], self.classes,
                      self.mean, self.std)


def source(name: str) -> Callable[[Callable[[DataConfig], Splits]], Callable[[DataConfig], Splits]]:
    def decorator(fn: Callable[[DataConfig], Splits]) -> Callable[[DataConfig], Splits]:
        SOURCES[name] = fn
        return fn
    return decorator


def load_splits(config: DataConfig) -> Splits:
    """The train/val images ``config`` describes."""
    splits = SOURCES[config.source](config)
    if config.limit_train or config.limit_val:
        splits = splits.limited(config.limit_train, config.limit_val)
    return splits


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of uint8 (N, C, h, w) images to (N, C, size, size), antialiased when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < max(images.shape[-2:]))
    return out.round().clamp(0, 255).to(torch.uint8)


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val): ``fraction`` of every class held out, chosen by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = max(1, round(len(members) * fraction))
        val.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def need_path(config: DataConfig) -> Path:
    if config.path is None:
        raise ValueError(f"data source {config.source!r} needs path: the local directory of the data")
    path = Path(config.path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist")
    return path


@source("digits")
def digits(config: DataConfig) -> Splits:
    """scikit-learn's bundled 1797 handwritten digits (8x8, 16 grey levels; UCI optdigits), resized to img_size."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul(255 / 16).round().to(torch.uint8)[:, None]  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).long()
    train, val = stratified_split(labels, config.val_fraction, config.split_seed)
    images = resize_uint8(images, config.img_size)
    return Splits(images[train], labels[train], images[val], labels[val], [str(d) for d in range(10)])


@source("synthetic")
def synthetic(config: DataConfig) -> Splits:
    """Class-conditional noise: each class is a smooth random pattern, each image that pattern plus noise, shifted."""
    generator = torch.Generator().manual_seed(config.split_seed)
    size, c = config.img_size, config.channels
    prototypes = F.interpolate(torch.rand(config.num_classes, c, 4, 4, generator=generator), size=(size, size),
                               mode="bilinear", align_corners=False)  # (classes, C, S, S)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(config.num_classes, (n,), generator=generator)
        shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
        images = prototypes[labels].roll(shifts, dims=(2, 3)) + 0.15 * torch.randn(n, c, size, size, generator=generator)
        return images.clamp(0, 1).mul(255).round().to(torch.uint8), labels

    train_x, train_y = draw(config.train_size)
    val_x, val_y = draw(config.val_size)
    return Splits(train_x, train_y, val_x, val_y, [f"class{i}" for i in range(config.num_classes)])


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")  # the format CIFAR is distributed in (python pickles of numpy arrays)


def _cifar(config: DataConfig, folder: str, train_files: list[str], test_file: str, label_key: bytes,
           meta_file: str, names_key: bytes) -> Splits:
    root = need_path(config)
    if (root / folder).is_dir():
        root = root / folder
    missing = [name for name in (*train_files, test_file) if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{config.source}: {root} lacks {', '.join(missing)} (expected the python version "
                                f"of the dataset, {folder}/)")

    def read(names: list[str]) -> tuple[Tensor, Tensor]:
        batches = [_unpickle(root / name) for name in names]
        data = torch.cat([torch.as_tensor(b[b"data"]).reshape(-1, 3, 32, 32) for b in batches])
        labels = torch.cat([torch.as_tensor(b[label_key]).long() for b in batches])
        return resize_uint8(data, config.img_size), labels

    train_x, train_y = read(train_files)
    val_x, val_y = read([test_file])
    meta = root / meta_file
    if meta.is_file():
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(meta)[names_key]]
    else:
        classes = [str(i) for i in range(int(train_y.max()) + 1)]
    return Splits(train_x, train_y, val_x, val_y, classes)


@source("cifar10")
def cifar10(config: DataConfig) -> Splits:
    """CIFAR-10 (Krizhevsky 2009) from the python batches (``cifar-10-batches-py``) at ``path``."""
    return _cifar(config, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels",
                  "batches.meta", b"label_names")


@source("cifar100")
def cifar100(config: DataConfig) -> Splits:
    """CIFAR-100 (Krizhevsky 2009), fine labels, from the python files (``cifar-100-python``) at ``path``."""
    return _cifar(config, "cifar-100-python", ["train"], "test", b"fine_labels", "meta", b"fine_label_names")


def _read_folder(root: Path, classes: list[str], size: int, channels: int) -> tuple[Tensor, Tensor]:
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[channels]
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            with Image.open(file) as image:
                image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            images.append(pixels.reshape(size, size, channels).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise FileNotFoundError(f"no images under {root}")
    return torch.stack(images), torch.tensor(labels)


@source("imagefolder")
def imagefolder(config: DataConfig) -> Splits:
    """``path/<class>/*.png`` (held-out share by ``val_fraction``) or ``path/train/<class>`` + ``path/val/<class>``,
    decoded once into memory at img_size (``channels``: 3 for RGB, 1 for greyscale)."""
    root = need_path(config)
    channels = 1 if config.channels == 1 else 3
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        train_x, train_y = _read_folder(root / "train", classes, config.img_size, channels)
        val_x, val_y = _read_folder(root / "val", classes, config.img_size, channels)
        return Splits(train_x, train_y, val_x, val_y, classes)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"imagefolder: {root} has no class folders (expected {root}/<class>/<image>)")
    images, labels = _read_folder(root, classes, config.img_size, channels)
    train, val = stratified_split(labels, config.val_fraction, config.split_seed)
    return Splits(images[train], labels[train], images[val], labels[val], classes)
