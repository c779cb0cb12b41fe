"""Running a sweep's runs: in this process, in N worker processes, or as Ray tasks on a cluster.

Whatever runs them, each run goes through ``execute_run`` (train with checkpoints in ``DIR/runs/<run_id>/``, count
params and MACs, save the model with its checksum) and returns one record; only the driver appends records to
``DIR/results.jsonl``. Speed and memory are not measured here, where other runs may be training at the same
time: the driver measures them after training (driver.measure_phase).
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


def try_lock_run_dir(run_dir: Path) -> int | None:
    """The run's lock if no process holds it now (then nothing is writing in the directory), else None."""
    import fcntl

    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def execute_run(run: dict[str, Any], sweep_dir: str, *, threads: int | None = None, make_progress: Any = None,
                progress_lines: bool = False) -> dict[str, Any]:
    """Train one run (resuming from its last good checkpoint if there is one), count its params and MACs; never
    raises for a failed run: the record says ``status: failed`` and why."""
    from metablocks.data import DataConfig
    from metablocks.train.checkpoint import MODEL_FILE, atomic_write, save_model
    from metablocks.train.config import TrainConfig
    from metablocks.train.loop import train
    from metablocks.train.measure import static_measures

    spec = RunSpec.from_dict(run)
    run_dir = Path(sweep_dir) / "runs" / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun (several GPUs per run) only rank 0 locks and writes
    fd = _lock_run_dir(run_dir) if main else None
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
                           measure=None, name=spec.title, make_progress=make_progress)
        except Exception as err:  # a failed run is a result: NaN loss, a mixer rejecting the input, ...
            phase = "train"
            reason = f"{type(err).__name__}: {err}".strip()
            if main:
                (run_dir / "error.txt").write_text(traceback.format_exc())
            return _record(spec, status="failed", phase=phase, error=reason[:2000],
                           wall_time_s=time.perf_counter() - start)
        model = result.pop("_model")
        result.pop("_ema", None)
        if not main:
            return _record(spec, status="ok", **result, wall_time_s=time.perf_counter() - start)
        in_chans = model.recipe.in_chans
        result.update(static_measures(model, spec.data["img_size"], in_chans), in_chans=in_chans)
        save_model(run_dir / MODEL_FILE, model)
        record = _record(spec, status="ok", **result, wall_time_s=time.perf_counter() - start)
        atomic_write(run_dir / "record.json", json.dumps(record, default=str).encode())
        return record
    finally:
        if fd is not None:
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
    come back as task results and the driver writes them (and measures speed afterwards, on its own host).

    Each run gets its own placement group: one bundle of ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs on one
    node. With more than one GPU the task trains the run data-parallel over them (torchrun on that node). A task
    whose worker dies (node lost, killed) is retried ``max_retries`` times and resumes from its last checkpoint; a
    killed driver resumes the same way when the sweep is run again.
    """

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                 max_retries: int = 2) -> None:
        self.address, self.cpus_per_run, self.gpus_per_run = address, cpus_per_run, gpus_per_run
        self.max_retries = max_retries
        if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
            raise ValueError(f"gpus_per_run above 1 must be a whole number of GPUs, given {gpus_per_run}")

    def execute(self, runs: Sequence[RunSpec], sweep_dir: Path, on_done: OnDone, progress: Any) -> None:
        try:
            import ray
            from ray.util.placement_group import placement_group, remove_placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        except ImportError:
            raise RuntimeError("the Ray executor needs Ray: pip install 'metablocks[ray]'") from None
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        try:
            bundle = {"CPU": self.cpus_per_run, **({"GPU": self.gpus_per_run} if self.gpus_per_run else {})}
            task = ray.remote(_ray_run)
            threads = max(1, int(self.cpus_per_run))
            processes = int(self.gpus_per_run) if self.gpus_per_run > 1 else 1
            pending, groups = {}, {}
            for run in runs:
                group = placement_group([bundle], strategy="STRICT_PACK")
                ref = task.options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                   max_retries=self.max_retries, scheduling_strategy=PlacementGroupSchedulingStrategy(
                                       group, placement_group_bundle_index=0)).remote(
                    run.to_dict(), str(sweep_dir), threads, processes)
                pending[ref], groups[ref] = run, group
            progress.note(f"submitted {len(pending)} runs to Ray at {self.address or 'a local Ray instance'} "
                          f"(one placement group per run: {bundle})")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    run = pending.pop(ref)
                    remove_placement_group(groups.pop(ref))
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # the task's worker died (OOM, node lost, ...) more than max_retries
                        record = _record(run, status="failed", phase="ray", error=f"Ray task failed: {err}"[:2000],
                                         wall_time_s=None)
                    on_done(record)
        finally:
            if started:
                ray.shutdown()


def _ray_run(run: dict[str, Any], sweep_dir: str, threads: int, processes: int = 1) -> dict[str, Any]:
    import socket

    if processes > 1:
        record = _torchrun(run, sweep_dir, threads, processes)
    else:
        record = execute_run(run, sweep_dir, threads=threads)
    record["host"] = socket.gethostname()
    record["ray_pid"] = os.getpid()
    return record


def _torchrun(run: dict[str, Any], sweep_dir: str, threads: int, processes: int) -> dict[str, Any]:
    """The run trained data-parallel by ``processes`` processes on this node (one per GPU Ray gave the task)."""
    import subprocess

    from metablocks.train.checkpoint import atomic_write

    run_dir = Path(sweep_dir) / "runs" / run["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    spec, out = run_dir / ".run.json", run_dir / f".record.{os.getpid()}.json"
    atomic_write(spec, json.dumps(run).encode())
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
               "metablocks.sweep.executor", str(spec), sweep_dir, str(threads), str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if out.is_file():
        record = json.loads(out.read_text())
        out.unlink()
        return record
    return _record(RunSpec.from_dict(run), status="failed", phase="torchrun", wall_time_s=None,
                   error=f"torchrun exited with {done.returncode}: {done.stderr[-1500:]}")


if __name__ == "__main__":  # one rank of a run under torchrun (see _torchrun)
    _spec, _sweep_dir, _threads, _out = sys.argv[1:5]
    _result = execute_run(json.loads(Path(_spec).read_text()), _sweep_dir, threads=int(_threads))
    if int(os.environ.get("RANK", "0")) == 0:
        from metablocks.train.checkpoint import atomic_write

        atomic_write(Path(_out), json.dumps(_result, default=str).encode())
