"""timm's augmentation and regularization wired from the train section: recipe: deit, RandAugment, random erasing,
Mixup/CutMix, EMA (checkpointed and resumed), drop path, timm optimizers, lr scaling, tracking, CLI flags."""
import argparse
import json

import pytest
import torch
from helpers import Stop, interrupt_at

import metablocks
from metablocks.cli import main
from metablocks.commands.train import add_train_flags, train_config
from metablocks.data import AugmentConfig, DataConfig
from metablocks.train import TrainConfig, train
from metablocks.train.checkpoint import load_extra
from metablocks.train.config import DEIT
from metablocks.train.optim import make_optimizer, peak_lr

TINY = {"name": "tiny", "stem": {"type": "conv", "kernel_size": 3, "stride": 2, "padding": 1},
        "downsample": {"type": "conv"},
        "block": {"norm": {"type": "groupnorm", "num_groups": 1}, "layer_scale": 1.0},
        "stages": [{"depth": 1, "dim": 8}, {"depth": 1, "dim": 16}]}
DATA = DataConfig(source="synthetic", img_size=16, num_classes=4, train_size=64, val_size=32, workers=0,
                  augment=AugmentConfig(crop_padding=0))
FAST = TrainConfig(epochs=1, batch_size=16, lr=3e-3, warmup_epochs=0, threads=1, track=())


def fast(**fields) -> TrainConfig:
    """FAST with ``fields`` set, validated (nested settings as mappings)."""
    return TrainConfig.model_validate({**FAST.model_dump(), **fields})


def test_deit_recipe_fills_the_papers_settings_and_explicit_fields_win() -> None:
    deit = TrainConfig(recipe="deit")
    assert (deit.epochs, deit.lr, deit.lr_base_size, deit.weight_decay, deit.warmup_epochs) == (300, 5e-4, 512, 0.05, 5)
    assert (deit.min_lr, deit.warmup_lr, deit.label_smoothing, deit.clip_grad, deit.drop_path) == (
        1e-5, 1e-6, 0.1, None, 0.1)
    assert deit.transform.auto_augment == "rand-m9-mstd0.5-inc1" and deit.transform.interpolation == "bicubic"
    assert (deit.transform.re_prob, deit.transform.re_mode, deit.transform.crop_pct) == (0.25, "pixel", 0.875)
    assert (deit.mixup.mixup_alpha, deit.mixup.cutmix_alpha, deit.mixup.switch_prob) == (0.8, 1.0, 0.5)
    assert deit.ema.decay == 0.99996
    mine = TrainConfig(recipe="deit", epochs=3, transform={"re_prob": 0.0}, mixup={"cutmix_alpha": 0.0})
    assert mine.epochs == 3 and mine.transform.re_prob == 0.0 and mine.transform.auto_augment == DEIT["transform"][
        "auto_augment"]
    assert mine.mixup.cutmix_alpha == 0.0 and mine.mixup.mixup_alpha == 0.8  # nested settings merge per field
    assert TrainConfig.model_validate(mine.model_dump(mode="json")) == mine
    assert peak_lr(deit, 1024) == pytest.approx(1e-3)  # 5e-4 per 512 images, scaled to the global batch


def test_new_fields_stay_out_of_dumps_at_their_defaults() -> None:
    assert set(TrainConfig().model_dump()) == {"epochs", "batch_size", "lr", "min_lr", "weight_decay", "betas",
                                                "warmup_epochs", "label_smoothing", "clip_grad", "amp", "device",
                                                "seed", "deterministic", "threads", "eval_batch_size"}
    assert "loader" not in DataConfig().model_dump() and DataConfig(workers=4).model_dump()["workers"] == 4
    assert TrainConfig(compile=True).model_dump()["compile"] is True


def test_mistakes_are_sentences() -> None:
    with pytest.raises(ValueError, match="auto_augment 'rand-x9' is not a timm policy"):
        TrainConfig(transform={"auto_augment": "rand-x9"})
    with pytest.raises(ValueError, match="unknown optimizer 'lamm'.*did you mean 'lamb'"):
        TrainConfig(opt="lamm")
    with pytest.raises(ValueError, match="mixup_alpha and cutmix_alpha are both 0"):
        TrainConfig(mixup={"mixup_alpha": 0, "cutmix_alpha": 0})
    with pytest.raises(ValueError, match="per-process batch_size must be even, given 15"):
        train(TINY, data=DATA, config=fast(**{"batch_size": 15, "mixup": {"mixup_alpha": 0.5}}))


def test_randaugment_and_random_erasing_run_on_every_training_image(monkeypatch) -> None:
    from timm.data import auto_augment, random_erasing

    calls = {"ra": 0, "re": 0}
    ra_call, re_call = auto_augment.RandAugment.__call__, random_erasing.RandomErasing.__call__

    def count_ra(self, img):
        calls["ra"] += 1
        return ra_call(self, img)

    def count_re(self, x):
        calls["re"] += 1
        out = re_call(self, x)
        assert self.probability == 1.0 and self.mode == "pixel"
        return out

    monkeypatch.setattr(auto_augment.RandAugment, "__call__", count_ra)
    monkeypatch.setattr(random_erasing.RandomErasing, "__call__", count_re)
    config = fast(**{"transform": {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 1.0,
                                                   "re_mode": "pixel"}})
    result = train(TINY, data=DATA, config=config)  # workers=0: the transform runs in this process
    assert calls == {"ra": 64, "re": 64}  # 4 steps of 16, each image once
    assert result["train_size"] == 64


def test_mixup_cutmix_mix_every_batch_with_smoothed_soft_targets(monkeypatch) -> None:
    from timm import data as timm_data

    seen = []

    class Spy(timm_data.Mixup):
        def __call__(self, x, target):
            x2, soft = super().__call__(x, target)
            seen.append((self.mixup_alpha, self.cutmix_alpha, self.label_smoothing, soft))
            return x2, soft

    monkeypatch.setattr(timm_data, "Mixup", Spy)
    config = fast(**{"label_smoothing": 0.2, "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}})
    mixed = train(TINY, data=DATA, config=config)
    assert len(seen) == 4 and all(s[:3] == (0.8, 1.0, 0.2) for s in seen)
    for *_, soft in seen:
        assert soft.shape == (16, 4) and torch.allclose(soft.sum(1), torch.ones(16))
        assert soft.max() <= 1 - 0.2 + 0.2 / 4 + 1e-6  # smoothed, and mixed from two images
    plain = train(TINY, data=DATA, config=fast(**{"label_smoothing": 0.2}))
    assert mixed["curves"][0]["train_loss"] != plain["curves"][0]["train_loss"]


def test_ema_is_evaluated_checkpointed_and_resumed_exactly(tmp_path) -> None:
    config = fast(**{"epochs": 3, "ema": {"decay": 0.9}})
    straight = train(TINY, data=DATA, config=config)
    assert "top1_ema" in straight and all("val_top1_ema" in c for c in straight["curves"])
    ema, model = straight["_ema"].state_dict(), straight["_model"].state_dict()
    assert any(not torch.equal(ema[k], model[k]) for k in model)  # an average, not the weights

    Interrupt = interrupt_at(6)  # in the second epoch (4 steps per epoch)

    with pytest.raises(Stop):
        train(TINY, data=DATA, config=config, out_dir=tmp_path, make_progress=Interrupt)
    assert load_extra(tmp_path / "checkpoint.safetensors").keys() == ema.keys()
    resumed = train(TINY, data=DATA, config=config, out_dir=tmp_path)
    assert resumed["resumed_from"] == [1]
    assert [c["val_top1_ema"] for c in resumed["curves"]] == [c["val_top1_ema"] for c in straight["curves"]]
    again = resumed["_ema"].state_dict()
    assert all(torch.equal(ema[k], again[k]) for k in ema)


def test_drop_path_timm_optimizer_and_channels_last() -> None:
    result = train(TINY, data=DATA, config=fast(**{"drop_path": 0.1, "opt": "lamb",
                                                                   "channels_last": True}))
    model = result["_model"]
    assert model.recipe.drop_path_rate == 0.1
    assert model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, fast(**{"opt": "lamb", "betas": (0.8, 0.99)}), lr=0.01)
    assert type(optimizer).__name__ == "Lamb" and optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]  # no decay on norms/biases/scales
    sgd = make_optimizer(model, fast(**{"opt": "sgd"}), lr=0.01)
    assert type(sgd).__name__ == "SGD" and sgd.param_groups[0]["lr"] == 0.01


def test_tensorboard_event_files_hold_the_curves(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(TINY, data=DATA, config=fast(**{"epochs": 2, "track": ("tensorboard",),
                                                                   "log_every": 2}), out_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    top1 = [(e.step, e.value) for e in events.Scalars("epoch/val_top1")]
    assert top1 == [(4, pytest.approx(result["curves"][0]["val_top1"])),
                    (8, pytest.approx(result["curves"][1]["val_top1"]))]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]


def test_cli_flags_build_the_train_section() -> None:
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    config = train_config(parser.parse_args(["--train-recipe", "deit", "--mixup", "0.2", "--aa", "rand-m7",
                                             "--ema-decay", "0.999", "--track"]))
    assert config.recipe == "deit" and config.mixup.mixup_alpha == 0.2 and config.mixup.cutmix_alpha == 1.0
    assert config.transform.auto_augment == "rand-m7" and config.transform.re_prob == 0.25
    assert config.ema.decay == 0.999 and config.track == ()
    alone = train_config(parser.parse_args(["--mixup", "0.3"]))
    assert (alone.mixup.mixup_alpha, alone.mixup.cutmix_alpha, alone.transform, alone.ema) == (0.3, 0.0, None, None)


def test_cli_trains_an_image_folder_with_the_deit_recipe(tmp_path, capsys) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(2):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.random((20, 20, 3)) * 120 + 100 * c).astype(np.uint8)).save(
                tmp_path / "data" / f"c{c}" / f"{i}.png")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    code = main(["train", str(recipe), "--data", "imagefolder", "--data-path", str(tmp_path / "data"), "--img-size",
                 "16", "--epochs", "1", "--batch-size", "8", "--train-recipe", "deit", "--lr-base-size", "8",
                 "--workers", "1", "--threads", "1", "--track", "--out", str(out), "--no-progress"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["data_loader"] == "stream (1 workers)" and result["train_size"] == 16 and result["val_size"] == 4
    assert "top1_ema" in result and "top-1" in capsys.readouterr().out
    metablocks.build_model(TINY)  # (the CLI left the registry usable)
