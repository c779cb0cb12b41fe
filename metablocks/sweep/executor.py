"""Running a sweep's runs: in this process, in N worker processes, or as Ray tasks on a cluster.

Whatever runs them, each run goes through ``execute_run`` (train with checkpoints in ``DIR/runs/<run_id>/``, then
measure) and returns one record; only the driver appends records to ``DIR/results.jsonl``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from metablocks.sweep.spec import RunSpec

OnDone = Callable[[dict[str, Any]], None]


def _lock_run_dir(run_dir: Path) -> int:
    """Exclusive lock on a run's directory: two processes never train the same run at once."""
    import fcntl

    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _record(spec: RunSpec, **fields: Any) -> dict[str, Any]:
    return {"run_id": spec.run_id, "config": spec.config_key, "labels": spec.labels, "seed": spec.seed,
            "values": spec.values, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}


def execute_run(run: dict[str, Any], sweep_dir: str, *, threads: int | None = None, make_progress: Any = None,
                progress_lines: bool = False) -> dict[str, Any]:
    """Train and measure one run (resuming from its checkpoint if there is one); never raises for a failed run:
    the record says ``status: failed`` and why."""
    from metablocks.data import DataConfig
    from metablocks.train.checkpoint import atomic_write
    from metablocks.train.config import MeasureConfig, TrainConfig
    from metablocks.train.loop import train

    spec = RunSpec.from_dict(run)
    run_dir = Path(sweep_dir) / "runs" / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _lock_run_dir(run_dir)
    start = time.perf_counter()
    try:
        if spec.invalid:
            return _record(spec, status="failed", phase="check", error=spec.invalid, wall_time_s=0.0)
        config = TrainConfig.model_validate(spec.train)
        if threads and config.threads is None:
            config = config.model_copy(update={"threads": threads})
        if make_progress is None and progress_lines:
            from metablocks.train.progress import Progress

            make_progress = Progress(bars=False).run
        try:
            result = train(spec.recipe, data=DataConfig.model_validate(spec.data), config=config, out_dir=run_dir,
                           measure=MeasureConfig.model_validate(spec.measure), name=spec.title,
                           make_progress=make_progress)
        except Exception as err:  # a failed run is a result: NaN loss, a mixer rejecting the input, ...
            phase = "train"
            reason = f"{type(err).__name__}: {err}".strip()
            (run_dir / "error.txt").write_text(traceback.format_exc())
            return _record(spec, status="failed", phase=phase, error=reason[:2000],
                           wall_time_s=time.perf_counter() - start)
        model = result.pop("_model")
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(run_dir / "model.safetensors"))
        record = _record(spec, status="ok", **result, wall_time_s=time.perf_counter() - start)
        atomic_write(run_dir / "record.json", json.dumps(record, default=str).encode())
        return record
    finally:
        os.close(fd)  # releases the lock


class LocalExecutor:
    """Runs in this process (``workers=1``) or in up to ``workers`` child processes, one fresh process per run
    (a crashing run takes down only its own process; torch threads are split between the workers)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)

    def execute(self, runs: Sequence[RunSpec], sweep_dir: Path, on_done: OnDone, progress: Any) -> None:
        if self.workers == 1:
            for run in runs:
                on_done(execute_run(run.to_dict(), str(sweep_dir), make_progress=progress.run))
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        context = mp.get_context("spawn")
        queue = list(runs)
        active: dict[Any, tuple[RunSpec, Path]] = {}
        try:
            while queue or active:
                while queue and len(active) < self.workers:
                    run = queue.pop(0)
                    out = sweep_dir / "runs" / run.run_id / f".record.{os.getpid()}.json"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.unlink(missing_ok=True)
                    process = context.Process(target=_child, args=(run.to_dict(), str(sweep_dir), threads, str(out),
                                                                   getattr(progress, "enabled", True)), daemon=True)
                    process.start()
                    active[process] = (run, out)
                for process in [p for p in active if not p.is_alive()]:
                    run, out = active.pop(process)
                    process.join()
                    if out.is_file():
                        record = json.loads(out.read_text())
                        out.unlink()
                    else:
                        why = (f"signal {signal.Signals(-process.exitcode).name}" if process.exitcode < 0
                               else f"exit code {process.exitcode}")
                        record = _record(run, status="failed", phase="process", error=f"worker process died ({why})",
                                      wall_time_s=None)
                    on_done(record)
                time.sleep(0.2)
        finally:
            for process in active:
                process.kill()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (no orphan keeps training)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _child(run: dict[str, Any], sweep_dir: str, threads: int, out: str, progress_lines: bool = True) -> None:
    _die_with_parent()
    from metablocks.train.checkpoint import atomic_write

    record = execute_run(run, sweep_dir, threads=threads, progress_lines=progress_lines)
    atomic_write(Path(out), json.dumps(record, default=str).encode())


class RayExecutor:
    """One Ray task per run on a cluster (``address``: ``auto``, ``ray://host:10001``, ``host:6379``; None starts
    a local Ray). The sweep directory must be reachable by every node for checkpoints (shared storage); records
    come back as task results and the driver writes them."""

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0) -> None:
        self.address, self.cpus_per_run = address, cpus_per_run

    def execute(self, runs: Sequence[RunSpec], sweep_dir: Path, on_done: OnDone, progress: Any) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray executor needs Ray: pip install 'metablocks[ray]'") from None
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        try:
            task = ray.remote(num_cpus=self.cpus_per_run, max_retries=0)(_ray_run)
            threads = max(1, int(self.cpus_per_run))
            pending = {task.remote(run.to_dict(), str(sweep_dir), threads): run for run in runs}
            progress.note(f"submitted {len(pending)} runs to Ray at {self.address or 'a local Ray instance'}")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    run = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # the task's worker died (OOM, node lost, ...)
                        record = _record(run, status="failed", phase="ray", error=f"Ray task failed: {err}"[:2000],
                                         wall_time_s=None)
                    on_done(record)
        finally:
            if started:
                ray.shutdown()


def _ray_run(run: dict[str, Any], sweep_dir: str, threads: int) -> dict[str, Any]:
    import socket

    record = execute_run(run, sweep_dir, threads=threads)
    record["host"] = socket.gethostname()
    record["ray_pid"] = os.getpid()
    return record
