"""Batch augmentation in torch: normalize, random translation (pad + crop), flips, noise; seeded by a generator."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metablocks.data.config import AugmentConfig


class Augment:
    """uint8 (B, C, H, W) -> normalized float; with ``train=True`` also the random transforms of ``config``."""

    def __init__(self, config: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.config = config
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: Tensor, *, train: bool, generator: torch.Generator | None = None) -> Tensor:
        x = (images.float() / 255 - self.mean.to(images.device)) / self.std.to(images.device)
        if not train:
            return x
        b, _, h, w = x.shape
        pad = self.config.crop_padding
        if pad:
            padded = F.pad(x, (pad, pad, pad, pad))  # zeros are the mean after normalization
            dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
            rows = (torch.arange(h, device=x.device) + dy[:, None])[:, :, None]  # (B, H, 1)
            cols = (torch.arange(w, device=x.device) + dx[:, None])[:, None, :]  # (B, 1, W)
            x = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # (B, H, W, C)
            x = x.permute(0, 3, 1, 2).contiguous()
        if self.config.hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.config.noise:
            x = x + self.config.noise * torch.randn(x.shape, generator=generator).to(x.device)
        return x
