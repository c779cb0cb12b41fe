"""Images read from disk at every epoch by a ``torch.utils.data.DataLoader`` (workers, pinned memory, persistent
workers), so memory does not grow with the dataset: an image folder is a list of paths, each decoded when its batch
is due. Also the per-image timm transforms for in-memory sets, and the sampler both paths share.

The sampler takes the same seeded permutation as ``Batches`` and gives rank r items r, r + world, ... of it, so
streaming sees exactly the batches the in-memory path sees, and 2 processes see exactly the batches of 1. Each item
carries a seed of (training seed, epoch, index): a random transform draws the same for an image whichever worker or
process decodes it, and whatever ran before.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler

from metablocks.data.config import DataConfig, TransformConfig
from metablocks.data.sources import IMAGE_SUFFIXES, need_path, stratified_split

# ImageNet-1k channel statistics in [0, 1] units (the values of timm.data.IMAGENET_DEFAULT_MEAN / _STD)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STREAM_SOURCES = ("imagefolder",)


@dataclass
class FileSplits:
    """Train and validation images as paths on disk (numpy byte strings: no per-item Python objects for forked
    workers to copy on access) with int64 labels."""

    train_files: np.ndarray
    train_labels: np.ndarray
    val_files: np.ndarray
    val_labels: np.ndarray
    classes: list[str]
    channels: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.channels

    @property
    def train_size(self) -> int:
        return len(self.train_labels)

    @property
    def val_size(self) -> int:
        return len(self.val_labels)


def _list_folder(root: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    return files, labels


def _arrays(files: list[str], labels: list[int], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    files, labels = files[:limit], labels[:limit]
    return np.array([f.encode() for f in files], dtype=np.bytes_), np.array(labels, dtype=np.int64)


def list_image_folder(config: DataConfig) -> FileSplits:
    """The files of ``path/<class>/*`` (held-out share by ``val_fraction``, split as the in-memory source splits
    it) or of ``path/train/<class>`` + ``path/val/<class>``."""
    root = need_path(config)
    channels = 1 if config.channels == 1 else 3
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        train = _list_folder(root / "train", classes)
        val = _list_folder(root / "val", classes)
    else:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"imagefolder: {root} has no class folders (expected {root}/<class>/<image>)")
        files, labels = _list_folder(root, classes)
        train_idx, val_idx = stratified_split(torch.tensor(labels), config.val_fraction, config.split_seed)
        train = ([files[i] for i in train_idx.tolist()], [labels[i] for i in train_idx.tolist()])
        val = ([files[i] for i in val_idx.tolist()], [labels[i] for i in val_idx.tolist()])
    return FileSplits(*_arrays(*train, config.limit_train), *_arrays(*val, config.limit_val), classes, channels)


def streamable(config: DataConfig) -> bool:
    """Whether ``config`` is read by streaming (``loader``: auto streams the sources that can be streamed)."""
    if config.loader == "stream" and config.source not in STREAM_SOURCES:
        raise ValueError(f"data source {config.source!r} is read into memory; loader: stream is for "
                         f"{', '.join(STREAM_SOURCES)}")
    return config.loader == "stream" or (config.loader == "auto" and config.source in STREAM_SOURCES)


# -- per-image transforms ---------------------------------------------------------------------------------------
def pil_mode(channels: int) -> str:
    return {1: "L", 3: "RGB"}[channels]


def to_uint8(image: Any) -> Tensor:
    """A PIL image as a uint8 (C, H, W) tensor (one copy of the pixels)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels).permute(2, 0, 1)


class PlainResize:
    """Resize to (size, size), bilinear, as uint8: what the in-memory image folder decodes each file to."""

    random = False  # draws nothing: no per-image seeding needed
    takes_tensors = True  # ImageFiles may hand it a decoded uint8 tensor already at size (see ImageFiles.decode)

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Tensor:
        from PIL import Image

        if isinstance(image, Tensor):
            return image
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return to_uint8(image)


def _posterize_keeping_zero_bits(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """PIL's posterize, with 0 bits giving the black image Pillow < 12 gave (Pillow 12+ raises): RandAugment's
    'PosterizeIncreasing' asks for 0 bits at magnitude 10, which ``mstd0.5`` reaches."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_timm_posterize() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = _posterize_keeping_zero_bits


def timm_train_transform(config: TransformConfig, img_size: int, mean: tuple[float, ...],
                         std: tuple[float, ...]) -> Callable[[Any], Tensor]:
    """``timm.data.create_transform(is_training=True)`` with the settings of ``config``: PIL in, normalized float
    (C, H, W) out, random erasing included."""
    from timm.data import create_transform

    _fix_timm_posterize()
    return create_transform(img_size, is_training=True, scale=config.scale, ratio=config.ratio, hflip=config.hflip,
                            vflip=config.vflip, color_jitter=config.color_jitter, auto_augment=config.auto_augment,
                            interpolation=config.interpolation, mean=mean, std=std, re_prob=config.re_prob,
                            re_mode=config.re_mode, re_count=config.re_count)


def timm_eval_transform(config: TransformConfig, img_size: int) -> Callable[[Any], Tensor]:
    """timm's evaluation resize (shorter side to img_size / crop_pct) and centre crop, as uint8 (normalized on the
    device like every evaluation batch)."""
    from timm.data import create_transform

    interpolation = "bilinear" if config.interpolation == "random" else config.interpolation
    return create_transform(img_size, is_training=False, crop_pct=config.crop_pct, interpolation=interpolation,
                            use_prefetcher=True)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's global generators seeded by ``seed`` inside, restored after (timm's transforms
    draw from all three)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63


class _Images(Dataset):
    """Items are ``index`` or ``(seed, index)`` (from ``EpochShards``): the image through ``transform``, its label."""

    transform: Callable[[Any], Tensor]
    labels: np.ndarray

    def image(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        seed, index = key if isinstance(key, tuple) else (None, key)
        image = self.image(index)
        if seed is None or not getattr(self.transform, "random", True):
            x = self.transform(image)
        else:
            with seeded(seed):
                x = self.transform(image)
        return x, int(self.labels[index])


class ImageFiles(_Images):
    """Image files decoded on access (PIL), converted to ``channels``, then ``transform``.

    For a transform that takes tensors (``PlainResize``), RGB JPEG/PNG files already at its size are decoded by
    torchvision's libjpeg-turbo / libpng decoder straight into a uint8 tensor (2-3x less CPU per small image than
    PIL's Python-level header parsing; the same pixels as PIL's decode on the files tested); any other file, or a
    decode error, goes through PIL.
    """

    FAST_SUFFIXES = (b".jpg", b".jpeg", b".png")

    def __init__(self, files: np.ndarray, labels: np.ndarray, channels: int,
                 transform: Callable[[Any], Tensor]) -> None:
        self.files, self.labels, self.mode, self.transform = files, labels, pil_mode(channels), transform
        self.fast = channels == 3 and getattr(transform, "takes_tensors", False)
        if self.fast:
            self._decode("")  # import torchvision's decoders here, before the workers fork: their pages are shared

    def image(self, index: int) -> Any:
        if self.fast and self.files[index].lower().endswith(self.FAST_SUFFIXES):
            pixels = self._decode(self.files[index].decode())
            if pixels is not None and pixels.shape[-2:] == (self.transform.size, self.transform.size):
                return pixels
        return self._pil(index)

    @staticmethod
    def _decode(path: str) -> Tensor | None:
        import warnings

        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec); PIL is
                warnings.simplefilter("ignore", DeprecationWarning)  # the fallback once they are gone
                from torchvision.io import ImageReadMode, decode_image, read_file

                return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except Exception:  # no torchvision (decoders), or a file they refuse: PIL decides
            return None

    def _pil(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.files[index].decode()) as image:
            if image.mode == self.mode:
                image.load()  # decode now, while the file is open
                return image
            return image.convert(self.mode)


class MemoryImages(_Images):
    """uint8 (N, C, H, W) images in memory, each handed to ``transform`` as a PIL image."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Any], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels.numpy(), transform
        self.mode = pil_mode(images.shape[1])

    def image(self, index: int) -> Any:
        from PIL import Image

        pixels = self.images[index].permute(1, 2, 0).numpy()
        return Image.fromarray(pixels[..., 0] if self.mode == "L" else pixels, self.mode)


class EpochShards(DistributedSampler):
    """This rank's share of the epoch's seeded permutation, as ``(seed, index)`` items (see the module docstring).

    The permutation is ``Batches``' (seeded by seed * 100003 + epoch), cut to whole global batches when
    ``drop_last``; rank r takes items r, r + world, ... Call ``set_epoch`` before each epoch.
    """

    def __init__(self, size: int, *, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if drop_last and size < batch_size * world:
            raise ValueError(f"{size} images are fewer than one global batch of {batch_size * world}")
        self.size, self.global_batch, self.shuffle, self.drop_last = size, batch_size * world, shuffle, drop_last
        self.rank, self.num_replicas, self.seed, self.epoch = rank, world, seed, 0
        usable = size // self.global_batch * self.global_batch if drop_last else size
        self.num_samples, self.total_size = len(range(rank, usable, world)), usable  # DistributedSampler's fields

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        usable = self.size // self.global_batch * self.global_batch if self.drop_last else self.size
        for index in order[:usable][self.rank::self.num_replicas].tolist():
            yield sample_seed(self.seed, self.epoch, index), index

    def __len__(self) -> int:
        return self.num_samples


class Shard(Sampler):
    """Items rank, rank + world, ... in order (evaluation: every image once across the ranks, none repeated)."""

    def __init__(self, size: int, rank: int = 0, world: int = 1) -> None:
        self.indices = range(rank, size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
