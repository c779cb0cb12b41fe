"""Sweep specs (validation with file/line, grid/zip/random, seeds), running in-process, failures, results, report."""
import json
import textwrap

import pytest
import torch

import metablocks
from metablocks.cli import main
from helpers import TINY_RECIPE
from metablocks.sweep import ResultStore, Sweep, SweepError, run_sweep
from metablocks.sweep.plots import pareto
from metablocks.sweep.results import aggregate

BASE = TINY_RECIPE
SETTINGS = textwrap.dedent("""\
    data: {source: synthetic, img_size: 16, num_classes: 4, train_size: 32, val_size: 16}
    train: {epochs: 1, batch_size: 16, threads: 1}
    measure: {batch_size: 4, warmup: 0, iters: 1}
    """)


def write(tmp_path, body: str, name: str = "sweep.yaml"):
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / name
    path.write_text(textwrap.dedent(body) + SETTINGS)
    return path


def test_grid_with_stage_slices_and_seeds(tmp_path) -> None:
    path = write(tmp_path, """\
        name: grid
        base: base.yaml
        axes:
          - path: "stages[0:].token_mixer"
            values: [pooling, {type: attention, head_dim: 8}]
          - path: stages[1].dim
            values: [16, 24]
        seeds: [3, 4]
        """)
    runs = Sweep.load(path).plan()
    assert len(runs) == 8
    assert [r.labels for r in runs[::2]] == [
        {"token_mixer": "pooling", "dim": "16"}, {"token_mixer": "pooling", "dim": "24"},
        {"token_mixer": "attention(head_dim=8)", "dim": "16"}, {"token_mixer": "attention(head_dim=8)", "dim": "24"}]
    assert [r.seed for r in runs[:2]] == [3, 4] and [r.train["seed"] for r in runs[:2]] == [3, 4]
    attention = runs[4].recipe
    assert [s["token_mixer"]["type"] for s in attention["stages"]] == ["attention", "attention"]
    assert attention["stages"][1]["dim"] == 16 and runs[6].recipe["stages"][1]["dim"] == 24
    assert attention["img_size"] == [16, 16]
    assert len({r.run_id for r in runs}) == 8
    assert Sweep.load(path).plan()[5].run_id == runs[5].run_id  # ids are stable


def test_zip_random_repeats_and_setting_axes(tmp_path) -> None:
    zipped = write(tmp_path, """\
        name: z
        base: base.yaml
        mode: zip
        axes:
          - {path: "stages[1].token_mixer", values: [pooling, identity, sepconv]}
          - {path: train.lr, values: [0.1, 0.2, 0.3]}
        repeats: 2
        """)
    runs = Sweep.load(zipped).plan()
    assert [(r.labels["token_mixer"], r.train["lr"], r.seed) for r in runs[:4]] == [
        ("pooling", 0.1, 0), ("pooling", 0.1, 1), ("identity", 0.2, 0), ("identity", 0.2, 1)]
    assert len(runs) == 6
    sampled = write(tmp_path, """\
        name: r
        base: base.yaml
        mode: random
        samples: 3
        sample_seed: 7
        axes:
          - {path: "stages[1].token_mixer", values: [pooling, identity, sepconv]}
          - {path: "stages[0].dim", values: [8, 12, 16], name: width}
        """, "random.yaml")
    picked = [r.labels for r in Sweep.load(sampled).plan()]
    assert len(picked) == 3 and len({tuple(p.values()) for p in picked}) == 3
    assert picked == [r.labels for r in Sweep.load(sampled).plan()]  # the same draw every time


def test_spec_errors_have_file_line_and_field(tmp_path) -> None:
    path = write(tmp_path, """\
        name: bad
        base: base.yaml
        axes:
          - path: "stages[1].token_mixer"
            values:
              - pooling
              - wavlet
              - {type: attention, head_dimm: 8}
        seed: 3
        """)
    with pytest.raises(SweepError) as err:
        Sweep.load(path)
    assert f"{path}:9: seed: unknown field 'seed' (did you mean 'seeds'?)" in str(err.value)
    path.write_text(path.read_text().replace("seed: 3", "seeds: [3]"))
    with pytest.raises(SweepError) as err:
        Sweep.load(path).plan()
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid sweep: 2 problems:"
    assert lines[1].startswith(f"  {path}:7: axes[0].values[1]: stages[1].token_mixer: unknown token_mixer 'wavlet' "
                               f"(did you mean 'wavelet'?)")
    assert lines[2].startswith(f"  {path}:8: axes[0].values[2]: stages[1].token_mixer.head_dimm: unknown field "
                               f"'head_dimm' (did you mean 'head_dim'?)")


def test_spec_consistency_errors(tmp_path) -> None:
    path = write(tmp_path, """\
        name: z
        base: base.yaml
        mode: zip
        axes:
          - {path: "stages[1].token_mixer", values: [pooling, identity]}
          - {path: "stages[0].dim", values: [8]}
        """)
    with pytest.raises(SweepError, match=r"zip pairs the i-th values of every axis, so all axes need as many values "
                                         r"\(token_mixer: 2, dim: 1\)"):
        Sweep.load(path)
    with pytest.raises(SweepError, match="random mode needs samples"):
        Sweep.load({"name": "x", "base": "poolformer_s12", "mode": "random"})
    with pytest.raises(SweepError, match=r"overrides\.stages\[9\]\.dim: index 9 is out of range"):
        Sweep.load({"name": "x", "base": "poolformer_s12", "overrides": {"stages[9].dim": 3}}).plan()


def test_mixer_rejecting_the_resolution_is_planned_invalid(tmp_path) -> None:
    path = write(tmp_path, """\
        name: inv
        base: base.yaml
        axes:
          - {path: "stages[1].token_mixer", values: [pooling, {type: attention, sr_ratio: 8}]}
        """)
    runs = Sweep.load(path).plan()
    assert runs[0].invalid is None
    assert runs[1].invalid == "stages[1].token_mixer: token_mixer 'attention': sr_ratio=8 exceeds the 4x4 map"


@metablocks.register("token_mixer", "test_sweep_nan", replace=True)
class NanMixer(torch.nn.Module):
    """Returns NaN: a run that diverges."""

    def __init__(self, dim: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def test_run_records_failures_resumes_and_reports(tmp_path) -> None:
    path = write(tmp_path, """\
        name: mixers
        base: base.yaml
        axes:
          - path: "stages[1].token_mixer"
            name: mixer
            values: [pooling, identity, test_sweep_nan, {type: attention, sr_ratio: 8}]
            labels: [pooling, identity, nan, too_small]
        """)
    out = tmp_path / "out"
    records = run_sweep(path, out, progress=False)
    status = {r["labels"]["mixer"]: r["status"] for r in records}
    assert status == {"pooling": "ok", "identity": "ok", "nan": "failed", "too_small": "failed"}
    by = {r["labels"]["mixer"]: r for r in records}
    assert by["nan"]["error"] == "TrainingFailed: non-finite loss (nan) at epoch 1, step 1"
    assert "sr_ratio=8 exceeds the 4x4 map" in by["too_small"]["error"] and by["too_small"]["phase"] == "check"
    ok = by["pooling"]
    assert ok["params"] == sum(p.numel() for p in metablocks.build_model(
        Sweep.load(path).plan()[0].recipe, num_classes=4).parameters())
    assert len(ok["curves"]) == 1 and 0 <= ok["top1"] <= 100

    lines = (out / "results.jsonl").read_text().splitlines()
    kinds = [json.loads(line).get("kind", "run") for line in lines]
    assert kinds == ["run"] * 4 + ["measure"] * 2  # the two ok configurations are measured after all training
    assert all(json.loads(line)["run_id"] for line in lines[:4])
    again = run_sweep(path, out, progress=False)  # nothing left to do: nothing is redone, re-measured or duplicated
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert [r["run_id"] for r in again] == [r["run_id"] for r in records]
    retried = run_sweep(path, out, progress=False, retry_failed=True)
    assert len((out / "results.jsonl").read_text().splitlines()) == 8  # two failed runs ran again, appended
    assert [r["status"] for r in retried] == ["ok", "ok", "failed", "failed"]

    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| mixer | params (K) | MACs (M) | top-1 % (mean ± std) | seeds |")
    assert table[2].startswith(f"| pooling | {ok['params'] / 1e3:.1f} | {ok['macs'] / 1e6:.2f} | {ok['top1']:.2f} | 1/1 |")
    assert "failed: TrainingFailed: non-finite loss" in table[4]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run_id,status,mixer,seed,params,macs") and len(csv_lines) == 5
    for png in ("top1_vs_macs.png", "top1_vs_params.png", "top1_vs_throughput_bN.png", "learning_curves.png"):
        (out / "plots" / png).unlink()
    assert main(["sweep", "report", str(out)]) == 0
    assert all((out / "plots" / png).read_bytes()[:4] == b"\x89PNG" for png in ("top1_vs_macs.png", "learning_curves.png"))


def test_second_driver_on_the_same_directory_is_refused(tmp_path) -> None:
    from metablocks.sweep.results import SweepLocked

    store = ResultStore(tmp_path).lock()
    try:
        with pytest.raises(SweepLocked, match="another process is running the sweep"):
            ResultStore(tmp_path).lock()
    finally:
        store.unlock()
    ResultStore(tmp_path).lock().unlock()


def _rec(run_id: str, **fields) -> dict:
    """A valid failed-run record (the fields ResultStore requires) with ``fields`` added."""
    return {"run_id": run_id, "status": "failed", "config": "base", "labels": {}, "seed": 0, **fields}


def test_append_keeps_every_line_whole(tmp_path) -> None:
    store = ResultStore(tmp_path)
    for i in range(5):
        store.append(_rec(f"r{i}", value=i))
    store.append(_rec("r1", value=10))
    assert [r["value"] for r in store.records()] == [0, 1, 2, 3, 4, 10]
    assert store.latest()["r1"]["value"] == 10
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    store.append(_rec("x", top1=float("nan"), curves=[{"val_loss": float("inf")}]))
    assert store.records()[-1] == _rec("x", top1=None, curves=[{"val_loss": None}])  # strict JSON
    assert "NaN" not in store.path.read_text() and len(store.records()) == 7


def test_pareto_front() -> None:
    points = [(1.0, 50.0), (2.0, 60.0), (3.0, 55.0), (4.0, 70.0), (2.0, 40.0)]
    assert pareto(points) == [0, 1, 3]  # cheapest, then each step up in accuracy
    assert pareto(points, cost_higher_is_better=True) == [3]  # throughput: more is better


def test_aggregate_mean_and_std_over_seeds() -> None:
    base = {"config": "mixer=a", "labels": {"mixer": "a"}, "status": "ok", "params": 10, "macs": 20}
    rows = aggregate([{**base, "seed": 0, "top1": 80.0}, {**base, "seed": 1, "top1": 90.0},
                      {**base, "seed": 2, "status": "failed", "error": "boom"}])
    assert rows[0]["top1_mean"] == 85.0 and rows[0]["top1_std"] == pytest.approx(7.0710678)
    assert rows[0]["ok"] == 2 and rows[0]["runs"] == 3 and rows[0]["errors"] == ["boom"] and rows[0]["seeds"] == [0, 1]


def test_cli_plan(tmp_path, capsys) -> None:
    path = write(tmp_path, """\
        name: p
        base: base.yaml
        axes:
          - {path: "stages[1].token_mixer", values: [pooling, identity], name: mixer}
        seeds: [0, 1]
        """)
    assert main(["sweep", "plan", str(path), "--macs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sweep p: 4 runs = 2 configurations x 2 seed(s) (grid); 1 epochs each on synthetic at 16px"
    assert out[1].split() == ["#", "mixer", "seed", "run_id", "status", "params", "MACs"]
    model = metablocks.build_model(Sweep.load(path).plan()[0].recipe, num_classes=4)
    assert out[2].split()[1:3] == ["pooling", "0"] and out[2].split()[4:6] == ["to", "run"]
    from metablocks.analysis import human

    assert out[2].split()[6] == human(sum(p.numel() for p in model.parameters()))
    assert main(["sweep", "plan", str(tmp_path / "base.yaml")]) == 2  # a recipe is not a sweep: error, exit 2
