"""Image classification data for ``metablocks train`` and sweeps: in-memory splits with torch batch augmentation for
the small bundled sets, image folders streamed from disk by DataLoader workers, timm's per-image transforms
(``pipeline.Pipeline`` picks the path; see docs/training.md).

Sources (``DataConfig.source``): ``digits`` (scikit-learn's bundled 8x8 handwritten digits, resized; nothing is
downloaded), ``imagefolder`` (``root/<class>/*.png``, or ``root/train`` + ``root/val``), ``cifar10`` / ``cifar100``
(the python pickle batches from a local path) and ``synthetic`` (a class-conditional generator for tests).
"""
from metablocks.data.augment import Augment
from metablocks.data.config import AugmentConfig, DataConfig, MixupConfig, TransformConfig
from metablocks.data.loader import Batches
from metablocks.data.sources import SOURCES, Splits, load_splits, source

__all__ = ["Augment", "AugmentConfig", "Batches", "DataConfig", "MixupConfig", "SOURCES", "Splits", "TransformConfig",
           "load_splits", "source"]
