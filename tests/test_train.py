"""Training one model: optimizer groups, schedule, determinism, checkpoint resume, failures, measurements, CLI."""
import json
import math

import pytest
import torch
from helpers import Stop, interrupt_at

import metablocks
from metablocks.cli import main
from metablocks.data import AugmentConfig, DataConfig
from metablocks.train import MeasureConfig, TrainConfig, TrainingFailed, train
from metablocks.train.checkpoint import load_weights
from metablocks.train.measure import count_macs, train_memory
from metablocks.train.optim import make_optimizer, make_scheduler, param_groups

TINY = {"name": "tiny", "stem": {"type": "conv", "kernel_size": 3, "stride": 2, "padding": 1},
        "downsample": {"type": "conv"},
        "block": {"norm": {"type": "groupnorm", "num_groups": 1}, "layer_scale": 1.0},
        "stages": [{"depth": 1, "dim": 8}, {"depth": 1, "dim": 16}]}
DATA = DataConfig(source="synthetic", img_size=16, num_classes=4, train_size=64, val_size=32,
                  augment=AugmentConfig(crop_padding=1, hflip=True))
FAST = TrainConfig(epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.5, threads=1)


def test_no_weight_decay_on_norms_biases_and_scales() -> None:
    model = metablocks.build_model(TINY, img_size=16, num_classes=4)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    skipped = sorted(names[id(p)] for p in no_decay["params"])
    assert "stages.0.blocks.0.layer_scale1.scale" in skipped and "stages.0.blocks.0.norm1.weight" in skipped
    assert "stem.conv.bias" in skipped and "head.fc.bias" in skipped
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "head.fc.weight", "stages.0.blocks.0.channel_mixer.fc1.weight", "stages.0.blocks.0.channel_mixer.fc2.weight",
        "stages.1.blocks.0.channel_mixer.fc1.weight", "stages.1.blocks.0.channel_mixer.fc2.weight",
        "stages.1.downsample.conv.weight", "stem.conv.weight"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine_per_step() -> None:
    param = torch.nn.Parameter(torch.zeros(2, 2))
    config = TrainConfig(epochs=3, lr=1.0, min_lr=0.1, warmup_epochs=1)
    optimizer = make_optimizer(torch.nn.Linear(2, 2), config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.01)  # warmup starts at lr / 100
    assert lrs[1] == pytest.approx(0.01 + 0.99 / 4) and lrs[4] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))  # rising through the warmup
    assert all(a > b for a, b in zip(lrs[4:12], lrs[5:13]))  # then falling
    assert lrs[8] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 4 / 8)) / 2)  # cosine over the 8 other steps
    assert lrs[12] == pytest.approx(0.1)
    del param


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_seeded_runs_are_identical_and_learn(tmp_path) -> None:
    a = train(TINY, data=DATA, config=FAST)
    b = train(TINY, data=DATA, config=FAST)
    assert [c["train_loss"] for c in a["curves"]] == [c["train_loss"] for c in b["curves"]]
    wa, wb = _weights(a["_model"]), _weights(b["_model"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = train(TINY, data=DATA, config=FAST.model_copy(update={"seed": 1}))
    assert other["curves"][-1]["train_loss"] != a["curves"][-1]["train_loss"]
    assert len(a["curves"]) == 2 and a["epochs"] == 2 and a["train_size"] == 64 and a["val_size"] == 32
    assert a["curves"][1]["train_loss"] < a["curves"][0]["train_loss"]


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path) -> None:
    straight = train(TINY, data=DATA, config=FAST.model_copy(update={"epochs": 3}))
    # interrupt a 3-epoch run in its second epoch (its checkpoint then holds epoch 1), then run it again
    Interrupt = interrupt_at(6)  # in the second epoch (4 steps per epoch)

    with pytest.raises(Stop):
        train(TINY, data=DATA, config=FAST.model_copy(update={"epochs": 3}), out_dir=tmp_path, make_progress=Interrupt)
    saved = load_weights(tmp_path / "checkpoint.safetensors")
    assert saved.keys() == straight["_model"].state_dict().keys()
    resumed = train(TINY, data=DATA, config=FAST.model_copy(update={"epochs": 3}), out_dir=tmp_path)
    assert resumed["resumed_from"] == [1]
    assert [c["train_loss"] for c in resumed["curves"]] == [c["train_loss"] for c in straight["curves"]]
    ws, wr = _weights(straight["_model"]), _weights(resumed["_model"])
    assert all(torch.equal(ws[k], wr[k]) for k in ws)


@metablocks.register("token_mixer", "test_nan_mixer", replace=True)
class NanMixer(torch.nn.Module):
    """A mixer that returns NaN (to test failure handling)."""

    def __init__(self, dim: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def test_non_finite_loss_fails_with_its_place() -> None:
    with pytest.raises(TrainingFailed, match=r"non-finite loss \(nan\) at epoch 1, step 1"):
        train(TINY, data=DATA, config=FAST, overrides={"stages[1].token_mixer": "test_nan_mixer"})


def test_measurements() -> None:
    result = train(TINY, data=DATA, config=FAST.model_copy(update={"epochs": 1}),
                   measure=MeasureConfig(batch_size=8, warmup=1, iters=2))
    model = result["_model"]
    assert result["params"] == sum(p.numel() for p in model.parameters())
    # conv stem 3x3 3->8 over 8x8 outputs: 3*9*8*64 MACs; the MAC count includes it
    assert result["macs"] == count_macs(model, 16, 3) and result["macs"] > 3 * 9 * 8 * 64
    for key in ("throughput_b1", "throughput_bN", "latency_b1_ms", "latency_bN_ms", "train_throughput", "peak_mem_mb"):
        assert result[key] > 0
    assert result["measure_batch"] == 8
    assert result["mem_method"] == "params+grads+adamw+saved_activations"


def test_memory_estimate_grows_with_batch() -> None:
    model = metablocks.build_model(TINY, img_size=16, num_classes=4)
    small = train_memory(model, 2, 16, 3, 4, torch.device("cpu"))
    large = train_memory(model, 8, 16, 3, 4, torch.device("cpu"))
    params = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert large["activation_mem_mb"] == pytest.approx(4 * small["activation_mem_mb"], rel=0.05)
    assert small["peak_mem_mb"] == pytest.approx(4 * params + small["activation_mem_mb"])
    # the input image alone (saved by the stem conv) is part of it
    assert small["activation_mem_mb"] * 2**20 >= 2 * 3 * 16 * 16 * 4


def test_cli_train_writes_result_and_weights(tmp_path, capsys) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    code = main(["train", str(recipe), "--data", "synthetic", "--img-size", "16", "--epochs", "1", "--batch-size",
                 "16", "--threads", "1", "--out", str(out), "--set", "stages[1].token_mixer=identity", "--no-progress"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 1 and len(result["curves"]) == 1 and result["num_classes"] == 10
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.safetensors").is_file()
    assert "top-1" in capsys.readouterr().out
    weights = load_weights(out / "checkpoint.safetensors")
    assert not any(k.startswith("stages.1.blocks.0.token_mixer.") for k in weights)  # identity has no weights
