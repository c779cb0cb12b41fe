"""Benchmark machinery: interleaved timing, training step, ratios, subprocess peak memory, ``metablocks bench``."""
import json

import pytest
import torch
from torch import nn

import metablocks
from metablocks.analysis import bench
from metablocks.cli import main


def test_interleaved_rounds_rotate_the_order() -> None:
    calls: list[str] = []
    timings = bench.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                      "c": lambda: calls.append("c")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "c",  # warm-up
                     "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later
    assert all(len(t.samples) == 3 and t.min <= t.median <= t.max for t in timings.values())


def test_timing_and_ratio() -> None:
    t = bench.Timing([0.010, 0.030, 0.020])
    assert t.median == 0.020 and t.ms() == "20.0 (10.0-30.0)"
    assert bench.Row("inference b1", 0.010, 0.015).ratio == pytest.approx(1.5)  # other / ours: we are 1.5x faster
    assert bench.Row("inference b1", 0.010).ratio is None


def test_train_step_updates_weights() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    before = model[1].weight.detach().clone()
    step = bench.train_step_call(model, torch.randn(2, 3, 2, 2), num_classes=4)
    loss = step()
    assert isinstance(loss, float) and loss > 0
    assert not torch.equal(before, model[1].weight)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_compare_reports_every_row() -> None:
    ours = metablocks.create_model("poolformer_s12", img_size=32)
    report = bench.compare(ours, ours, name="poolformer_s12", against="itself", batches=(1, 2), train_batch=2,
                           img_size=32, repeats=2, warmup=1)
    assert [r.what for r in report.rows] == ["inference b1", "inference b2", "train step b2"]
    assert report.max_abs_diff == 0.0
    table = report.table()
    assert table.splitlines()[0] == "| poolformer_s12 | ours | itself | ratio (itself / ours) |"
    assert "| max abs logit diff | 0.0e+00 | | |" in table
    assert report.conditions["threads"] == torch.get_num_threads() and report.conditions["img_size"] == 32


def test_peak_memory_falls_with_checkpointing() -> None:
    """Each in a fresh subprocess; two steps, so AdamW's state exists in both and the activations make the difference."""
    plain = bench.peak_train_memory("poolformer_s12", batch=16, img_size=96, steps=2)
    ckpt = bench.peak_train_memory("poolformer_s12", batch=16, img_size=96, steps=2, grad_checkpointing=True)
    assert 0 < ckpt < plain - 20 * 2**20  # at least 20 MB less


def test_steady_state_peak_leaves_out_the_first_steps_adamw_state() -> None:
    """From a cold start the peak includes AdamW's two moment buffers per parameter; after one warm-up step it has them."""
    cold = bench.peak_train_memory("poolformer_s12", batch=2, img_size=64, steps=1)
    steady = bench.peak_train_memory("poolformer_s12", batch=2, img_size=64, steps=1, warmup_steps=1)
    adamw_state = 2 * 4 * 11_915_176  # exp_avg and exp_avg_sq, fp32
    assert 0 < steady < cold - 0.9 * adamw_state


def test_bench_cli_deploy_json(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    code = main(["bench", "convnext_atto", "--deploy", "--img-size", "64", "--batch", "1", "--repeats", "2",
                 "--warmup", "1", "--train-batch", "0", "--no-memory", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| convnext_atto deployed | ours | not deployed | ratio (not deployed / ours) |" in printed
    data = json.loads(out.read_text())
    assert data[0]["rows"][0]["what"] == "inference b1" and data[0]["rows"][0]["ratio"] > 0
    assert data[0]["max_abs_diff"] <= 1e-4
