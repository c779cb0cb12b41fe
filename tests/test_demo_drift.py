"""The shipped demo results and the README's table are what the current code computes (issue 10, point 6).

The demo's accuracies, parameters, MACs and memory are deterministic (seeded, CPU), its timings are not. So:

* cheap, default suite: the README's block is the shipped results.md (with the machine it ran on); results.md and
  results.csv are what the current table code writes from the shipped records; the plan's run ids (a hash of each
  run's resolved recipe and settings) are the shipped ones; every configuration's params, MACs and memory estimate
  equal the shipped ones; and one run (identity, seed 0: the cheapest model, ~16 s) retrains to exactly the shipped
  top-1, best top-1, validation loss and learning curve;
* slow (``-m slow``): the whole sweep retrained, every deterministic column of every run compared.

When one fails after a change that moves the numbers on purpose, regenerate with
``python scripts/update_demo_results.py`` (runs the demo once, ~5 min) and commit the result.
"""
import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "mixer_ablation_results"
SPEC = ROOT / "examples" / "mixer_ablation.yaml"
REGENERATE = "stale demo results: regenerate them with `python scripts/update_demo_results.py` (runs the demo once)"
DETERMINISTIC = ("run_id", "status", "mixer", "seed", "params", "macs", "peak_mem_mb", "top1", "best_top1", "val_loss",
                 "epochs")  # compared where both the shipped and the new results have the column


def _script():
    spec = importlib.util.spec_from_file_location("update_demo_results", ROOT / "scripts" / "update_demo_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped_rows() -> list[dict[str, str]]:
    with (SHIPPED / "results.csv").open() as f:
        return list(csv.DictReader(f))


def shipped_lines() -> list[dict]:
    return [json.loads(line) for line in (SHIPPED / "results.jsonl").read_text().splitlines() if line.strip()]


def shipped_records() -> list[dict]:
    """The runs' records (the measurement records, one per configuration, are ``shipped_measurements``)."""
    return [r for r in shipped_lines() if r.get("kind", "run") == "run"]


def shipped_measurements() -> dict[str, dict]:
    return {r["config"]: r for r in shipped_lines() if r.get("kind") == "measure"}


def _same(shipped: str, ours) -> bool:
    if shipped == "" or ours is None:
        return shipped == "" and ours in (None, "")
    try:
        return float(shipped) == float(ours)
    except (TypeError, ValueError):
        return shipped == str(ours)


def test_readme_shows_the_shipped_results() -> None:
    script = _script()
    readme = (ROOT / "README.md").read_text()
    assert script.current_block(readme) == script.expected_block(), REGENERATE
    machine = json.loads((SHIPPED / "machine.json").read_text())
    assert machine["cpu"] in script.current_block(readme) and machine["cpus"] >= 1


def test_shipped_tables_are_what_the_code_writes_from_the_shipped_records(tmp_path: Path) -> None:
    from metablocks.sweep import Sweep
    from metablocks.sweep.results import write_tables

    sweep = Sweep.load(SPEC)
    latest = {r["run_id"]: r for r in shipped_records()}  # in the plan's order, as `sweep report` writes them
    records = [latest[run.run_id] for run in sweep.plan() if run.run_id in latest]
    columns = [axis.column for axis in sweep.spec.axes]
    csv_path, md_path = write_tables(tmp_path, records, columns, shipped_measurements())
    assert md_path.read_text() == (SHIPPED / "results.md").read_text(), REGENERATE
    assert csv_path.read_text() == (SHIPPED / "results.csv").read_text(), REGENERATE


def test_the_plan_and_the_model_numbers_are_the_shipped_ones() -> None:
    from metablocks.data import load_splits
    from metablocks.model import build_model
    from metablocks.sweep import Sweep
    from metablocks.train.measure import count_macs, count_params, train_memory

    sweep = Sweep.load(SPEC)
    runs = sweep.plan()
    rows = shipped_rows()
    assert [r.run_id for r in runs] == [row["run_id"] for row in rows], REGENERATE
    splits = load_splits(sweep.spec.data)
    size, batch = sweep.spec.data.img_size, sweep.spec.measure.batch_size
    for run, row in zip(runs[::2], rows[::2]):  # one per configuration: seeds share the architecture
        model = build_model(run.recipe, num_classes=splits.num_classes, in_chans=splits.in_chans)
        numbers = {"params": count_params(model), "macs": count_macs(model, size, splits.in_chans),
                   **train_memory(model, batch, size, splits.in_chans, splits.num_classes, torch.device("cpu"))}
        for column in ("params", "macs", "peak_mem_mb"):
            if column in row:
                assert _same(row[column], numbers[column]), (run.run_id, column, row[column], numbers[column], REGENERATE)


def _retrain(run_id: str) -> dict:
    from metablocks.data import DataConfig
    from metablocks.sweep import Sweep
    from metablocks.train.config import TrainConfig
    from metablocks.train.loop import train

    run = next(r for r in Sweep.load(SPEC).plan() if r.run_id == run_id)
    threads = torch.get_num_threads()
    try:
        return train(run.recipe, data=DataConfig.model_validate(run.data), config=TrainConfig.model_validate(run.train),
                     name=run.title)
    finally:
        torch.set_num_threads(threads)


def test_one_demo_run_retrains_to_the_shipped_accuracy() -> None:
    rows = {row["run_id"]: row for row in shipped_rows()}
    records = {r["run_id"]: r for r in shipped_records()}
    run_id = next(i for i in rows if i.startswith("identity-s0-"))
    result = _retrain(run_id)
    for column in ("top1", "best_top1", "val_loss", "epochs"):
        assert _same(rows[run_id][column], result[column]), (column, rows[run_id][column], result[column], REGENERATE)
    assert [c["val_top1"] for c in result["curves"]] == [c["val_top1"] for c in records[run_id]["curves"]], REGENERATE


@pytest.mark.slow
def test_the_whole_demo_sweep_retrains_to_the_shipped_results(tmp_path: Path) -> None:
    from metablocks.sweep import run_sweep

    records = {r["run_id"]: r for r in run_sweep(SPEC, tmp_path, workers=2, progress=False)}
    rows = shipped_rows()
    assert sorted(records) == sorted(row["run_id"] for row in rows), REGENERATE
    for row in rows:
        ours = {**records[row["run_id"]], **records[row["run_id"]]["labels"]}
        for column in DETERMINISTIC:
            if column in row and column in ours:
                assert _same(row[column], ours[column]), (row["run_id"], column, row[column], ours[column], REGENERATE)
