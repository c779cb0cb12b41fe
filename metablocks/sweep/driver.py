"""Driving a sweep: plan, skip what is finished, run the rest, append results, write tables and plots.

    DIR/plan.json            the runs of the current spec (what ``sweep report`` shows)
    DIR/results.jsonl        one record per finished run, append-only (the source of truth)
    DIR/results.csv, .md     per-run rows / per-configuration table, rewritten after every run
    DIR/plots/*.png          top-1 vs MACs / params / throughput, learning curves
    DIR/runs/<run_id>/       checkpoint.safetensors (resume), model.safetensors, record.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, TextIO

from metablocks.sweep.executor import LocalExecutor, RayExecutor
from metablocks.sweep.results import ResultStore, aggregate, write_tables
from metablocks.sweep.spec import RunSpec, Sweep, SweepSpec
from metablocks.train.checkpoint import atomic_write
from metablocks.train.progress import Progress

PLAN = "plan.json"


def _summary(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"FAILED ({record.get('error', '?')[:200]})"
    return (f"top-1 {record['top1']:.2f}%  params {record['params'] / 1e3:.1f}K  MACs {record['macs'] / 1e6:.2f}M"
            + (f"  (resumed from epoch {record['resumed_from'][-1]})" if record.get("resumed_from") else ""))


def write_plan(directory: Path, sweep: Sweep, runs: list[RunSpec]) -> None:
    plan = {"name": sweep.spec.name, "columns": [a.column for a in sweep.spec.axes], "group_by": sweep.spec.group_by,
            "spec": sweep.spec.model_dump(mode="json"), "runs": [r.to_dict() for r in runs]}
    atomic_write(directory / PLAN, json.dumps(plan, indent=1).encode())


def run_sweep(source: str | Path | Mapping[str, Any] | SweepSpec | Sweep, out_dir: str | Path, *,
              executor: str = "local", workers: int = 1, address: str | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float = 0.0, retry_failed: bool = False, progress: bool = True, bars: bool | None = None,
              stream: TextIO | None = None) -> list[dict[str, Any]]:
    """Run every run of the sweep not finished yet in ``out_dir``; returns the latest record of each planned run.

    Run the same call again after an interruption (even SIGKILL) and it resumes: finished runs are skipped, an
    interrupted run continues from its last epoch checkpoint. ``retry_failed`` runs failed runs again.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; executors: local, ray")
    sweep = source if isinstance(source, Sweep) else Sweep.load(source)
    runs = sweep.plan()
    out = Path(out_dir).resolve()
    store = ResultStore(out).lock()
    try:
        write_plan(out, sweep, runs)
        done = store.latest()
        pending = [r for r in runs if r.run_id not in done or (retry_failed and done[r.run_id]["status"] != "ok")]
        bar = Progress(len(runs), len(runs) - len(pending), stream=stream, bars=bars, enabled=progress,
                       desc=sweep.spec.name)
        if len(pending) < len(runs):
            bar.note(f"{len(runs) - len(pending)} of {len(runs)} runs already finished in {out}; running "
                     f"{len(pending)}")
        columns = [a.column for a in sweep.spec.axes]
        planned = {r.run_id for r in runs}

        def on_done(record: dict[str, Any]) -> None:
            store.append(record)
            write_tables(out, [r for r in store.latest().values() if r["run_id"] in planned], columns)
            bar.run_finished(record["config"] + f" seed={record['seed']}", _summary(record))

        runner = RayExecutor(address, cpus_per_run, gpus_per_run) if executor == "ray" else LocalExecutor(workers)
        try:
            runner.execute(pending, out, on_done, bar)
        finally:
            bar.close()
        report(out)
        latest = store.latest()
        return [latest[r.run_id] for r in runs if r.run_id in latest]
    finally:
        store.unlock()


def report(directory: str | Path) -> dict[str, Any]:
    """Regenerate tables and plots of the sweep in ``directory`` from its JSONL; returns the paths and rows."""
    from metablocks.sweep.plots import plot_curves, plot_tradeoffs

    directory = Path(directory)
    plan_file = directory / PLAN
    if not plan_file.is_file():
        raise FileNotFoundError(f"{directory} is not a sweep directory (no {PLAN})")
    plan = json.loads(plan_file.read_text())
    planned = [r["run_id"] for r in plan["runs"]]
    latest = ResultStore(directory).latest()
    records = [latest[i] for i in planned if i in latest]
    csv_path, md_path = write_tables(directory, records, plan["columns"])
    rows = aggregate(records)
    plots = directory / "plots"
    plots.mkdir(exist_ok=True)
    pngs = plot_tradeoffs(rows, plan["group_by"], plots, plan["name"])
    curves = plot_curves(rows, plan["group_by"], plots, plan["name"])
    return {"csv": csv_path, "markdown": md_path, "plots": [*pngs, *([curves] if curves else [])], "rows": rows,
            "finished": len(records), "planned": len(planned)}
