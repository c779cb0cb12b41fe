"""Driving a sweep: plan, heal, skip what is finished, run the rest, measure, append results, write tables and plots.

    DIR/plan.json            the runs of the current spec (what ``sweep report`` shows)
    DIR/results.jsonl        one record per finished run and per measured configuration, append-only (the truth)
    DIR/results.csv, .md     per-run rows / per-configuration table, rewritten after every record
    DIR/plots/*.png          top-1 vs MACs / params / throughput, learning curves
    DIR/runs/<run_id>/       checkpoint.safetensors (+ .prev, resume), model.safetensors, record.json

Before running, the driver heals the directory (each repair is printed as a note): invalid lines of results.jsonl
are set aside (results.py), temporary files of killed writes are deleted, and a finished run whose saved model is
missing or fails its checksum is run again (it resumes from its last good checkpoint, so its numbers are the same).

Speed and memory are measured after all training, in the driver, with nothing else running (``measure_phase``):
one configuration at a time, the model of its first finished seed timed in rounds alternating with the sweep's
reference model (the first valid configuration, freshly initialised with seed 0). Each configuration's
measurement is one record, shared by its seeds, appended as soon as it is taken: a killed sweep measures only what
is left.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, TextIO

from metablocks.sweep.executor import LocalExecutor, RayExecutor, try_lock_run_dir
from metablocks.sweep.results import ResultStore, SweepDirError, aggregate, write_tables
from metablocks.sweep.spec import RunSpec, Sweep, SweepSpec
from metablocks.train.checkpoint import MODEL_FILE, CorruptFile, atomic_write, load_model_weights, remove_stale_temps
from metablocks.train.progress import Progress

PLAN = "plan.json"


def _summary(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"FAILED ({record.get('error', '?')[:200]})"
    return (f"top-1 {record['top1']:.2f}%  params {record['params'] / 1e3:.1f}K  MACs {record['macs'] / 1e6:.2f}M"
            + (f"  (resumed from epoch {record['resumed_from'][-1]})" if record.get("resumed_from") else "")
            + ("  (a corrupt checkpoint was discarded)" if record.get("checkpoint_notes") else ""))


def write_plan(directory: Path, sweep: Sweep, runs: list[RunSpec]) -> None:
    plan = {"name": sweep.spec.name, "columns": [a.column for a in sweep.spec.axes], "group_by": sweep.spec.group_by,
            "spec": sweep.spec.model_dump(mode="json"), "runs": [r.to_dict() for r in runs]}
    atomic_write(directory / PLAN, json.dumps(plan, indent=1).encode())


def heal(directory: Path, store: ResultStore, runs: list[RunSpec]) -> tuple[list[str], set[str]]:
    """Repair a sweep directory whose lock this process holds: (notes, run ids whose ok record no longer counts
    because their saved model is missing or corrupt)."""
    notes = store.heal()
    removed = remove_stale_temps(directory)
    runs_dir = directory / "runs"
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        fd = try_lock_run_dir(run_dir)
        if fd is None:  # a worker (a Ray task of an earlier driver?) is still writing there
            continue
        try:
            removed += remove_stale_temps(run_dir)
            for stale in run_dir.glob(".record.*.json"):  # a dead worker's record, never appended: the run reruns
                stale.unlink()
                removed.append(stale)
        finally:
            os.close(fd)
    if removed:
        names = ", ".join(str(p.relative_to(directory)) for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
        notes.append(f"removed {len(removed)} temporary file(s) of interrupted writes: {names}")
    broken = set()
    latest = store.latest()
    for run in runs:
        record = latest.get(run.run_id)
        if record is None or record["status"] != "ok":
            continue
        model = directory / "runs" / run.run_id / MODEL_FILE
        try:
            load_model_weights(model)
        except CorruptFile as err:
            broken.add(run.run_id)
            notes.append(f"{err}: the run is run again")
        except OSError:
            broken.add(run.run_id)
            notes.append(f"{model} is missing: the run is run again")
    return notes, broken


def run_sweep(source: str | Path | Mapping[str, Any] | SweepSpec | Sweep, out_dir: str | Path, *,
              executor: str = "local", workers: int = 1, address: str | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float = 0.0, retry_failed: bool = False, progress: bool = True, bars: bool | None = None,
              stream: TextIO | None = None) -> list[dict[str, Any]]:
    """Run every run of the sweep not finished yet in ``out_dir``, then measure the configurations not measured
    yet; returns the latest record of each planned run (with its configuration's ``measurement``).

    Run the same call again after an interruption (even SIGKILL) and it resumes: finished runs are skipped, an
    interrupted run continues from its last good epoch checkpoint. ``retry_failed`` runs failed runs again.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; executors: local, ray")
    sweep = source if isinstance(source, Sweep) else Sweep.load(source)
    runs = sweep.plan()
    out = Path(out_dir).resolve()
    store = ResultStore(out).lock()
    try:
        write_plan(out, sweep, runs)
        notes, broken = heal(out, store, runs)
        done = store.latest()
        pending = [r for r in runs if r.run_id not in done or r.run_id in broken
                   or (retry_failed and done[r.run_id]["status"] != "ok")]
        bar = Progress(len(runs), len(runs) - len(pending), stream=stream, bars=bars, enabled=progress,
                       desc=sweep.spec.name)
        for note in notes:
            bar.note(f"note: {note}")
        if len(pending) < len(runs):
            bar.note(f"{len(runs) - len(pending)} of {len(runs)} runs already finished in {out}; running "
                     f"{len(pending)}")
        columns = [a.column for a in sweep.spec.axes]
        planned = {r.run_id for r in runs}

        def tables() -> None:
            write_tables(out, [r for r in store.latest().values() if r["run_id"] in planned], columns,
                         store.measurements())

        def on_done(record: dict[str, Any]) -> None:
            store.append(record)
            tables()
            bar.run_finished(record["config"] + f" seed={record['seed']}", _summary(record))

        runner = RayExecutor(address, cpus_per_run, gpus_per_run) if executor == "ray" else LocalExecutor(workers)
        try:
            runner.execute(pending, out, on_done, bar)
        finally:
            bar.close()
        measure_phase(sweep, runs, out, store, bar, executor=executor, on_measured=tables)
        report(out)
        latest, measured = store.latest(), store.measurements()
        return [{**latest[r.run_id], "measurement": measured.get(r.config_key)} for r in runs if r.run_id in latest]
    finally:
        store.unlock()


def measure_settings(spec: SweepSpec) -> dict[str, Any]:
    """What a measurement depends on besides the model: a measurement taken with other settings is taken again."""
    return {"measure": spec.measure.model_dump(mode="json"), "device": spec.train.device, "amp": spec.train.amp,
            "threads": spec.train.threads, "img_size": spec.data.img_size}


def measure_phase(sweep: Sweep, runs: list[RunSpec], out: Path, store: ResultStore, progress: Progress, *,
                  executor: str = "local", on_measured: Any = None) -> list[dict[str, Any]]:
    """Measure speed and memory of every configuration with a finished run and no measurement yet, one at a time,
    after training (call it when no run is training); returns the new measurement records."""
    import torch

    from metablocks.model import build_model
    from metablocks.train.config import TrainConfig
    from metablocks.train.loop import autocast_args, resolve_device
    from metablocks.train.measure import measure_against

    spec = sweep.spec
    settings = measure_settings(spec)
    latest, measured = store.latest(), store.measurements()
    configs: dict[str, list[RunSpec]] = {}
    for run in runs:
        configs.setdefault(run.config_key, []).append(run)
    todo = {key: [r for r in group if latest.get(r.run_id, {}).get("status") == "ok"] for key, group in configs.items()}
    todo = {key: ok for key, ok in todo.items()
            if ok and (key not in measured or measured[key].get("settings") != settings)}
    reference_run = next((r for r in runs if not r.invalid), None)
    if not todo or reference_run is None:
        return []
    first = latest[next(iter(todo.values()))[0].run_id]
    num_classes, in_chans = first["num_classes"], first.get("in_chans", 3)
    device = resolve_device(spec.train.device)
    autocast, _ = autocast_args(TrainConfig.model_validate(spec.train.model_dump()), device)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    torch.manual_seed(0)
    reference = build_model(reference_run.recipe, num_classes=num_classes, in_chans=in_chans).to(device).eval()
    busy = len(mp.active_children())
    progress.note(f"measuring {len(todo)} configuration(s) one at a time after training ({busy} other processes "
                  f"of this sweep running), alternating with the reference {reference_run.config_key}")
    records = []
    for key, ok in todo.items():
        model, used = None, None
        for run in ok:
            try:
                weights = load_model_weights(out / "runs" / run.run_id / MODEL_FILE)
            except (CorruptFile, OSError) as err:
                progress.note(f"note: cannot measure {run.run_id} ({err}); trying another seed")
                continue
            model = build_model(run.recipe, num_classes=num_classes, in_chans=in_chans)
            model.load_state_dict(weights)
            model, used = model.to(device).eval(), run
            break
        if model is None:
            continue
        numbers = measure_against(model, reference, img_size=spec.data.img_size, in_chans=in_chans,
                                  num_classes=num_classes, config=spec.measure, device=device, autocast=autocast)
        record = {"kind": "measure", "config": key, "labels": used.labels, "measured_run": used.run_id,
                  "models": [r.run_id for r in ok], "reference": reference_run.config_key, "settings": settings,
                  "phase": "after_training", "executor": executor, "other_processes": len(mp.active_children()),
                  "threads": torch.get_num_threads(), "device": str(device),
                  "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **numbers}
        store.append(record)
        records.append(record)
        if on_measured is not None:
            on_measured()
        if spec.measure.speed:
            progress.note(f"{key}: {record['throughput_bN']:.0f} img/s at batch {spec.measure.batch_size} "
                          f"({record['throughput_bN_min']:.0f}-{record['throughput_bN_max']:.0f} over "
                          f"{spec.measure.rounds} rounds), {record['throughput_bN_ratio']:.2f}x the reference")
    return records


def _read_plan(directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise SweepDirError(f"{directory} does not exist: no sweep there")
    if not directory.is_dir():
        raise SweepDirError(f"{directory} is a file, not a sweep directory")
    plan_file = directory / PLAN
    if not plan_file.exists():
        raise SweepDirError(f"{directory} is not a sweep directory (no {PLAN}; `metablocks sweep run SPEC --out "
                            f"{directory}` makes one)")
    try:
        plan = json.loads(plan_file.read_text())
    except OSError as err:
        raise SweepDirError(f"cannot read {plan_file}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SweepDirError(f"{plan_file} is damaged ({err}); `metablocks sweep run SPEC --out {directory}` "
                            f"rewrites it") from None
    fine = (isinstance(plan, dict) and isinstance(plan.get("runs"), list) and isinstance(plan.get("columns"), list)
            and all(isinstance(r, dict) and isinstance(r.get("run_id"), str) for r in plan["runs"])
            and isinstance(plan.get("name"), str))
    if not fine:
        raise SweepDirError(f"{plan_file} is damaged (it lacks name, columns or runs with run ids); "
                            f"`metablocks sweep run SPEC --out {directory}` rewrites it")
    return plan


def report(directory: str | Path) -> dict[str, Any]:
    """Regenerate tables and plots of the sweep in ``directory`` from its JSONL; returns the paths, rows and the
    notes on lines of results.jsonl that were skipped. A missing or broken directory raises SweepDirError."""
    from metablocks.sweep.plots import plot_curves, plot_tradeoffs

    directory = Path(directory)
    plan = _read_plan(directory)
    planned = [r["run_id"] for r in plan["runs"]]
    store = ResultStore(directory)
    _, bad = store.read()
    latest = store.latest()
    measurements = store.measurements()
    records = [latest[i] for i in planned if i in latest]
    try:
        csv_path, md_path = write_tables(directory, records, plan["columns"], measurements)
        rows = aggregate(records, measurements)
        plots = directory / "plots"
        plots.mkdir(exist_ok=True)
    except OSError as err:
        raise SweepDirError(f"cannot write the tables or plots in {directory}: {err.strerror}") from None
    group_by = plan.get("group_by")
    pngs = plot_tradeoffs(rows, group_by, plots, plan["name"])
    curves = plot_curves(rows, group_by, plots, plan["name"])
    return {"csv": csv_path, "markdown": md_path, "plots": [*pngs, *([curves] if curves else [])], "rows": rows,
            "finished": len(records), "planned": len(planned), "notes": [f"{b}: skipped" for b in bad]}
