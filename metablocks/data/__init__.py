"""Image classification data for ``metablocks train`` and sweeps, as in-memory splits with torch augmentation.

Sources (``DataConfig.source``): ``digits`` (scikit-learn's bundled 8x8 handwritten digits, resized; nothing is
downloaded), ``imagefolder`` (``root/<class>/*.png``, or ``root/train`` + ``root/val``), ``cifar10`` / ``cifar100``
(the python pickle batches from a local path) and ``synthetic`` (a class-conditional generator for tests).
"""
from metablocks.data.augment import Augment
from metablocks.data.config import AugmentConfig, DataConfig
from metablocks.data.loader import Batches
from metablocks.data.sources import SOURCES, Splits, load_splits, source

__all__ = ["Augment", "AugmentConfig", "Batches", "DataConfig", "SOURCES", "Splits", "load_splits", "source"]
