"""Seeded, sharded minibatches over in-memory images (the same order for a given seed and epoch in any process)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


class Batches:
    """Minibatches of (uint8 images, labels) for one process of ``world``.

    Each step takes one global batch of ``batch_size * world`` items of a permutation seeded by (seed, epoch);
    rank r keeps items r, r + world, ...: the union over ranks is exactly the batch one process of
    ``batch_size * world`` would see, so data-parallel training follows the single-process run.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool, drop_last: bool,
                 rank: int = 0, world: int = 1, seed: int = 0) -> None:
        if drop_last and len(images) < batch_size * world:
            raise ValueError(f"{len(images)} images are fewer than one global batch of {batch_size * world}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.world, self.seed = rank, world, seed

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(len(self.images))
        return torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(epoch)
        for step in range(len(self)):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch][self.rank::self.world]
            yield self.images[chunk], self.labels[chunk]
