"""Data sources, seeded sharded batches and batch augmentation."""
import pickle

import numpy as np
import pytest
import torch

from metablocks.data import Augment, AugmentConfig, Batches, DataConfig, load_splits
from metablocks.data.sources import resize_uint8, stratified_split


def test_digits_is_the_bundled_dataset_split_per_class() -> None:
    splits = load_splits(DataConfig(source="digits", img_size=32))
    assert splits.num_classes == 10 and splits.in_chans == 1
    assert len(splits.train_y) + len(splits.val_y) == 1797  # scikit-learn's optdigits test set, bundled
    assert splits.train_x.shape[1:] == (1, 32, 32) and splits.train_x.dtype == torch.uint8
    counts = torch.bincount(torch.cat([splits.train_y, splits.val_y]))
    held_out = torch.bincount(splits.val_y)
    assert held_out.tolist() == [round(n * 0.2) for n in counts.tolist()]  # 20% of every class
    assert len(splits.val_y) == 359
    again = load_splits(DataConfig(source="digits", img_size=32))
    assert torch.equal(again.val_x, splits.val_x)  # the split does not depend on any global seed


def test_digits_resize_keeps_the_image() -> None:
    from sklearn.datasets import load_digits

    original = load_digits().images[0]  # 8x8, values 0..16
    splits = load_splits(DataConfig(source="digits", img_size=8, val_fraction=0.5))
    first = torch.cat([splits.train_x, splits.val_x])[torch.cat([torch.arange(len(splits.train_y)), torch.arange(len(splits.val_y))]) == 0]
    assert any(torch.equal(img[0], torch.from_numpy(original).float().mul(255 / 16).round().to(torch.uint8))
               for img in first)


def test_resize_is_bilinear_and_exact_on_constants() -> None:
    img = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(img, 20), torch.full((2, 3, 20, 20), 77, dtype=torch.uint8))


def test_stratified_split_is_disjoint_and_complete() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train.tolist() + val.tolist()) == list(range(15))
    assert torch.bincount(labels[val]).tolist() == [2, 1]


def test_synthetic_is_deterministic_and_learnable_shape() -> None:
    config = DataConfig(source="synthetic", img_size=16, num_classes=4, train_size=40, val_size=12, channels=3)
    a, b = load_splits(config), load_splits(config)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert a.train_x.shape == (40, 3, 16, 16) and a.val_x.shape == (12, 3, 16, 16)
    assert a.num_classes == 4 and len(a.mean) == 3


def _write_cifar(root, n_per_batch: int, batches: int, label_key: bytes) -> np.ndarray:
    rng = np.random.default_rng(0)
    first = None
    names = [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"] if label_key == b"labels" else ["train", "test"]
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, label_key: labels}, f)
        first = data if first is None else first
    return first


def test_cifar10_python_batches(tmp_path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    first = _write_cifar(root, 6, 5, b"labels")
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    splits = load_splits(DataConfig(source="cifar10", path=str(tmp_path), img_size=32))
    assert splits.train_x.shape == (30, 3, 32, 32) and splits.val_x.shape == (6, 3, 32, 32)
    assert splits.classes[3] == "c3"
    # the row layout is 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert torch.equal(splits.train_x[0], torch.from_numpy(first[0].reshape(3, 32, 32)))


def test_cifar100_fine_labels_and_missing_files(tmp_path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    _write_cifar(root, 4, 1, b"fine_labels")
    splits = load_splits(DataConfig(source="cifar100", path=str(root), img_size=16))
    assert splits.train_x.shape == (4, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="lacks data_batch_1"):
        load_splits(DataConfig(source="cifar10", path=str(tmp_path), img_size=32))


def test_imagefolder_with_and_without_split(tmp_path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3 if split == "train" else 2):
                Image.new("RGB", (10, 12), colour).save(tmp_path / split / c / f"{i}.png")
    splits = load_splits(DataConfig(source="imagefolder", path=str(tmp_path), img_size=8))
    assert splits.classes == ["cat", "dog"]
    assert splits.train_x.shape == (6, 3, 8, 8) and splits.val_x.shape == (4, 3, 8, 8)
    assert splits.train_x[0, :, 4, 4].tolist() == [255, 0, 0] and splits.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    flat = load_splits(DataConfig(source="imagefolder", path=str(tmp_path / "train"), img_size=8, val_fraction=0.34))
    assert len(flat.train_y) + len(flat.val_y) == 6 and torch.bincount(flat.val_y).tolist() == [1, 1]


def test_unknown_source_suggests() -> None:
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        DataConfig(source="digit")


def test_batches_shard_the_single_process_batch() -> None:
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    labels = torch.arange(20)
    single = Batches(images, labels, 8, shuffle=True, drop_last=True, seed=5)
    ranks = [Batches(images, labels, 4, shuffle=True, drop_last=True, seed=5, rank=r, world=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == 2
    for whole, part0, part1 in zip(single.epoch(3), ranks[0].epoch(3), ranks[1].epoch(3)):
        assert sorted(torch.cat([part0[1], part1[1]]).tolist()) == sorted(whole[1].tolist())
        assert set(part0[1].tolist()).isdisjoint(part1[1].tolist())
    assert [b[1].tolist() for b in single.epoch(3)] == [b[1].tolist() for b in single.epoch(3)]
    assert [b[1].tolist() for b in single.epoch(3)] != [b[1].tolist() for b in single.epoch(4)]
    evaluation = Batches(images, labels, 8, shuffle=False, drop_last=False)
    assert [len(b[1]) for b in evaluation.epoch(0)] == [8, 8, 4]


def test_augment_normalizes_and_translates() -> None:
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 2, 2] = 255
    plain = Augment(AugmentConfig(crop_padding=0), mean=(0.0,), std=(1.0,))
    assert torch.equal(plain(x, train=True), x.float() / 255)
    shift = Augment(AugmentConfig(crop_padding=1), mean=(0.0,), std=(1.0,))
    seen = set()
    for seed in range(30):
        out = shift(x, train=True, generator=torch.Generator().manual_seed(seed))
        assert out.sum() == 1.0  # one bright pixel, moved by at most one pixel each way
        seen.add(tuple(out[0, 0].nonzero()[0].tolist()))
    assert seen == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}
    flip = Augment(AugmentConfig(crop_padding=0, hflip=True), mean=(0.5,), std=(0.5,))
    row = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    outs = {tuple(flip(row, train=True, generator=torch.Generator().manual_seed(s))[0, 0, 0].tolist()) for s in range(20)}
    assert outs == {(-1.0, 1.0), (1.0, -1.0)}
