"""Sweep measurements: speed and memory taken after all training, alone, interleaved with a reference model."""
import io
import json
import multiprocessing as mp

import pytest
import torch

import metablocks
from metablocks.sweep import LocalExecutor, Sweep, run_sweep
from metablocks.train import measure as measure_module
from metablocks.train.config import MeasureConfig
from helpers import tiny_sweep

SPEC = tiny_sweep("timed", (
    "seeds: [0, 1]\n"
    "data: {source: synthetic, img_size: 16, num_classes: 4, train_size: 32, val_size: 16}\n"
    "train: {epochs: 1, batch_size: 16, threads: 1}\n"
    "measure: {batch_size: 2, warmup: 0, iters: 1, rounds: 3}\n"
))


def _lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_workers_measure_after_training_alone_one_record_per_config(tmp_path, monkeypatch) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    events = []
    execute, measure = LocalExecutor.execute, measure_module.measure_against

    def logged_execute(self, *args, **kwargs):
        events.append("training starts")
        execute(self, *args, **kwargs)
        events.append("training done")

    def logged_measure(model, reference, **kwargs):
        events.append(f"measure ({len(mp.active_children())} worker processes alive)")
        return measure(model, reference, **kwargs)

    monkeypatch.setattr(LocalExecutor, "execute", logged_execute)
    monkeypatch.setattr(measure_module, "measure_against", logged_measure)
    records = run_sweep(spec, out, workers=2, progress=False, stream=io.StringIO())
    assert events == ["training starts", "training done", *["measure (0 worker processes alive)"] * 2]
    lines = _lines(out)
    assert [r.get("kind", "run") for r in lines] == ["run"] * 4 + ["measure"] * 2  # measured after every run
    runs = [r for r in lines if r.get("kind") != "measure"]
    assert all("throughput_b1" not in r and "peak_mem_mb" not in r for r in runs)  # no timing while training
    measured = {m["config"]: m for m in lines if m.get("kind") == "measure"}
    plan = Sweep.load(spec).plan()
    for key in ("mixer=pooling", "mixer=identity"):
        m = measured[key]
        assert m["phase"] == "after_training" and m["other_processes"] == 0 and m["rounds"] == 3
        assert m["reference"] == "mixer=pooling" and m["models"] == [r.run_id for r in plan if r.config_key == key]
        for metric in ("throughput_b1", "throughput_bN", "train_throughput"):
            assert m[f"{metric}_min"] <= m[metric] <= m[f"{metric}_max"]
            assert m[f"{metric}_ratio_min"] <= m[f"{metric}_ratio"] <= m[f"{metric}_ratio_max"]
    # both seeds of a configuration report the one measurement, with its spread
    by_seed = {(r["config"], r["seed"]): r["measurement"] for r in records}
    assert by_seed[("mixer=identity", 0)] == by_seed[("mixer=identity", 1)] == measured["mixer=identity"]
    table = (out / "results.md").read_text().splitlines()
    assert table[0].endswith("| peak mem (MiB) | bN vs ref |")
    m = measured["mixer=identity"]
    spread = 100 * max(m["throughput_bN_max"] - m["throughput_bN"], m["throughput_bN"] - m["throughput_bN_min"])
    assert f"| {m['throughput_bN']:,.0f} ±{spread / m['throughput_bN']:.0f}% |" in table[3]
    assert table[3].endswith(f"| {m['throughput_bN_ratio']:,.2f} |")


def test_measurement_phase_resumes_and_follows_its_settings(tmp_path, monkeypatch) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0]"))
    out = tmp_path / "out"
    calls = []
    measure = measure_module.measure_against

    def dies_on_the_second(model, reference, **kwargs):
        calls.append(kwargs["config"].rounds)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while measuring the second configuration
        return measure(model, reference, **kwargs)

    monkeypatch.setattr(measure_module, "measure_against", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, progress=False, stream=io.StringIO())
    lines = _lines(out)
    assert [r.get("kind", "run") for r in lines] == ["run", "run", "measure"]  # the first one is kept
    assert lines[2]["config"] == "mixer=pooling" and lines[2]["phase"] == "after_training"
    assert lines[2]["other_processes"] == 0 and lines[2]["models"] == [lines[0]["run_id"]]
    run_sweep(spec, out, progress=False, stream=io.StringIO())
    assert len(calls) == 3 and [r.get("kind", "run") for r in _lines(out)] == ["run", "run", "measure", "measure"]
    run_sweep(spec, out, progress=False, stream=io.StringIO())
    assert len(calls) == 3  # nothing measured twice
    spec.write_text(spec.read_text().replace("rounds: 3", "rounds: 2"))
    run_sweep(spec, out, progress=False, stream=io.StringIO())
    assert calls == [3, 3, 3, 2, 2]  # other settings: measured again, with them


def test_rounds_alternate_with_the_reference_and_report_the_spread(monkeypatch) -> None:
    model, reference = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    order = []
    speeds = {"model": iter([10.0, 30.0, 20.0]), "reference": iter([10.0, 10.0, 20.0])}

    def fake_inference(m, batch, *args):
        who = "model" if m is model else "reference"
        order.append(f"{who} b{batch}")
        return {"throughput": next(speeds[who]) if batch == 1 else 100.0, "latency_ms": 1.0}

    def fake_train(m, batch, *args):
        order.append(f"{'model' if m is model else 'reference'} train")
        return 50.0 if m is model else 25.0

    monkeypatch.setattr(measure_module, "inference_speed", fake_inference)
    monkeypatch.setattr(measure_module, "train_speed", fake_train)
    monkeypatch.setattr(measure_module, "train_memory", lambda *a: {"peak_mem_mb": 1.5})
    out = measure_module.measure_against(model, reference, img_size=4, in_chans=1, num_classes=2,
                                         config=MeasureConfig(batch_size=8, rounds=3), device=torch.device("cpu"))
    one_round = ["reference b1", "model b1", "reference b8", "model b8", "reference train", "model train"]
    assert order == one_round * 3
    assert (out["throughput_b1"], out["throughput_b1_min"], out["throughput_b1_max"]) == (20.0, 10.0, 30.0)
    assert (out["throughput_b1_ratio"], out["throughput_b1_ratio_min"], out["throughput_b1_ratio_max"]) == (
        1.0, 1.0, 3.0)  # per round: 10/10, 30/10, 20/20
    assert out["reference_throughput_b1"] == 10.0 and out["latency_b1_ms"] == 50.0
    assert out["train_throughput_ratio"] == 2.0 and out["latency_bN_ms"] == 80.0
    assert out["rounds"] == 3 and out["peak_mem_mb"] == 1.5


def test_train_speed_leaves_the_model_unchanged() -> None:
    model = metablocks.build_model({"name": "t", "stem": {"type": "conv", "kernel_size": 3, "stride": 2,
                                                          "padding": 1},
                                    "stages": [{"depth": 1, "dim": 8}]}, num_classes=3, img_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert measure_module.train_speed(model, 2, 8, 3, 3, MeasureConfig(warmup=0, iters=1), torch.device("cpu")) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
