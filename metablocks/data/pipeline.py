"""From a DataConfig to normalized batches on the training device, by the path that fits the data:

    in memory, no timm transform   Batches of uint8 tensors, augmented in torch on the device (data.augment)
    in memory, timm transform      a DataLoader over the tensors, each image through timm's transform in workers
    streamed from disk             a DataLoader over the files (workers, pinned memory, persistent workers);
                                   timm's transform when given, else the in-memory decode + data.augment

Every path takes the same seeded order of images (``Batches`` / ``EpochShards``), sharded over data-parallel ranks so
that the union over ranks is the single-process batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from metablocks.data.augment import Augment
from metablocks.data.config import DataConfig, TransformConfig
from metablocks.data.loader import Batches
from metablocks.data.sources import Splits, load_splits
from metablocks.data.stream import (IMAGENET_MEAN, IMAGENET_STD, EpochShards, FileSplits, ImageFiles, MemoryImages,
                                    PlainResize, Shard, list_image_folder, streamable, timm_eval_transform,
                                    timm_train_transform)


@dataclass(frozen=True)
class DataInfo:
    """What the model and the result need to know of the data."""

    classes: list[str]
    in_chans: int
    train_size: int
    val_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    streamed: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Pipeline:
    """Training and evaluation batches for one process of a (possibly data-parallel) run."""

    def __init__(self, data: DataConfig, *, transform: TransformConfig | None, batch_size: int, eval_batch_size: int,
                 seed: int, device: torch.device, rank: int = 0, world: int = 1, splits: Splits | None = None) -> None:
        self.data, self.transform, self.seed, self.device = data, transform, seed, device
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.eval_batch_size = eval_batch_size
        self.pin = data.pin_memory if data.pin_memory is not None else device.type == "cuda"
        if splits is None and streamable(data):
            files = list_image_folder(data)
            self.mean = data.mean or _imagenet(files.in_chans, IMAGENET_MEAN)
            self.std = data.std or _imagenet(files.in_chans, IMAGENET_STD)
            self.info = DataInfo(files.classes, files.in_chans, files.train_size, files.val_size, self.mean, self.std,
                                 streamed=True)
            self._stream(files)
        else:
            splits = splits if splits is not None else load_splits(data)
            self.mean, self.std = data.mean or splits.mean, data.std or splits.std
            self.info = DataInfo(splits.classes, splits.in_chans, len(splits.train_y), len(splits.val_y), self.mean,
                                 self.std, streamed=False)
            self._memory(splits)
        self.augment = Augment(data.augment, self.mean, self.std)

    # -- set-up --------------------------------------------------------------------------------------------------
    def _memory(self, splits: Splits) -> None:
        self.val_batches: Batches | DataLoader = Batches(splits.val_x, splits.val_y, self.eval_batch_size,
                                                         shuffle=False, drop_last=False, rank=self.rank,
                                                         world=self.world)
        if self.transform is None:
            self.train_batches: Batches | DataLoader = Batches(
                splits.train_x, splits.train_y, self.batch_size, shuffle=True, drop_last=True, rank=self.rank,
                world=self.world, seed=self.seed)
            return
        dataset = MemoryImages(splits.train_x, splits.train_y, self._train_transform())
        self.train_batches = self._loader(dataset, self._shards(len(dataset)), self.batch_size)

    def _stream(self, files: FileSplits) -> None:
        size, c = self.data.img_size, files.in_chans
        train_tf = self._train_transform() if self.transform is not None else PlainResize(size)
        eval_tf = timm_eval_transform(self.transform, size) if self.transform is not None else PlainResize(size)
        train = ImageFiles(files.train_files, files.train_labels, c, train_tf)
        val = ImageFiles(files.val_files, files.val_labels, c, eval_tf)
        self.train_batches = self._loader(train, self._shards(len(train)), self.batch_size)
        self.val_batches = self._loader(val, Shard(len(val), self.rank, self.world), self.eval_batch_size)

    def _train_transform(self) -> Any:
        return timm_train_transform(self.transform, self.data.img_size, self.mean, self.std)

    def _shards(self, size: int) -> EpochShards:
        return EpochShards(size, batch_size=self.batch_size, rank=self.rank, world=self.world, seed=self.seed)

    def _loader(self, dataset: Dataset, sampler: Sampler, batch_size: int) -> DataLoader:
        workers = self.data.workers
        # its own generator: the workers' base seed is then not drawn from the global one (which drop path draws
        # from), so runs with and without (persistent) workers, and resumed runs, draw the same drop paths
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=self.pin,
                          drop_last=False, persistent_workers=self.data.persistent_workers and workers > 0,
                          prefetch_factor=self.data.prefetch_factor if workers > 0 else None,
                          generator=torch.Generator().manual_seed(self.seed))

    # -- batches -------------------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def _to_device(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        blocking = not (self.pin and self.device.type == "cuda")
        return images.to(self.device, non_blocking=not blocking), labels.to(self.device, non_blocking=not blocking)

    def train_epoch(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized, augmented (images, labels) on the device; ``generator`` draws ``data.augment``'s batch
        transforms (the paths without a timm transform)."""
        if isinstance(self.train_batches, Batches):
            batches = self.train_batches.epoch(epoch)
        else:
            self.train_batches.sampler.set_epoch(epoch)
            batches = iter(self.train_batches)
        for images, labels in batches:
            x, y = self._to_device(images, labels)
            if x.dtype == torch.uint8:  # not through timm: data.augment on the whole batch
                x = self.augment(x, train=True, generator=generator)
            yield x, y

    def val(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of the validation images, normalized, in order."""
        batches = self.val_batches.epoch(0) if isinstance(self.val_batches, Batches) else iter(self.val_batches)
        for images, labels in batches:
            if len(labels) == 0:
                continue
            x, y = self._to_device(images, labels)
            yield self.augment(x, train=False), y


def _imagenet(channels: int, stats: tuple[float, ...]) -> tuple[float, ...]:
    return stats if channels == 3 else (sum(stats) / 3,) * channels
