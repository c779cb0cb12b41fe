"""The sweep's results: an append-only JSONL file (the source of truth), plus CSV and markdown views of it.

Every append rewrites the file through a temporary file and a rename, so after a crash at any moment the file is
the old one or the old one plus the new line: never a torn line, never a lost one. One writer per sweep directory
(the driver) is ensured with an exclusive lock.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable

from metablocks.train.checkpoint import atomic_write

RESULTS = "results.jsonl"
METRICS = ("params", "macs", "throughput_b1", "latency_b1_ms", "throughput_bN", "latency_bN_ms", "train_throughput",
           "peak_mem_mb", "top1", "best_top1")


class SweepLocked(RuntimeError):
    pass


class ResultStore:
    """``DIR/results.jsonl``: one JSON record per finished run (ok or failed); the latest record of a run wins."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / RESULTS
        self._lock: int | None = None

    def lock(self) -> ResultStore:
        """Hold the sweep directory's lock (released when the process ends, however it ends)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SweepLocked(f"another process is running the sweep in {self.dir}") from None
        self._lock = fd
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """run_id -> its latest record."""
        return {r["run_id"]: r for r in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (non-finite numbers are written as null: the file stays strict JSON)."""
        line = json.dumps(_finite(record), sort_keys=True, allow_nan=False, default=str) + "\n"
        old = self.path.read_bytes() if self.path.is_file() else b""
        atomic_write(self.path, old + line.encode())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (runs that differ only by seed), in first-seen order: top-1 mean ± std over the
    seeds that finished, the other measurements averaged, and the failures with their reasons."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["config"], []).append(record)
    rows = []
    for key, runs in groups.items():
        ok = [r for r in runs if r["status"] == "ok"]
        row: dict[str, Any] = {"config": key, **runs[0]["labels"], "runs": len(runs), "ok": len(ok),
                               "seeds": sorted(r["seed"] for r in ok)}
        row["top1_mean"], row["top1_std"] = _mean_std([r["top1"] for r in ok])
        for metric in METRICS[:-2]:
            values = [r[metric] for r in ok if r.get(metric) is not None]
            row[metric] = statistics.fmean(values) if values else None
        epochs = [len(r["curves"]) for r in ok if r.get("curves")]
        if epochs:
            n = min(epochs)
            row["curve_top1"] = [statistics.fmean(r["curves"][e]["val_top1"] for r in ok) for e in range(n)]
            row["curve_train_loss"] = [statistics.fmean(r["curves"][e]["train_loss"] for r in ok) for e in range(n)]
        failed = [r for r in runs if r["status"] != "ok"]
        row["errors"] = sorted({r.get("error", "") for r in failed})
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The aggregated rows as a GitHub markdown table (numbers rounded for reading; the JSONL has them exact)."""
    head = [*columns, "params (K)", "MACs (M)", "top-1 % (mean ± std)", "seeds", "img/s b1", "img/s bN",
            "latency b1 (ms)", "train img/s", "peak mem (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["ok"]:
            top1 = f"{row['top1_mean']:.2f}" + (f" ± {row['top1_std']:.2f}" if row["ok"] > 1 else "")  # no spread of one
        else:
            top1 = "failed: " + "; ".join(row["errors"])[:120].replace("|", "/")
        cells = [str(row.get(c, "")) for c in columns] + [
            _fmt(row["params"] / 1e3 if row["params"] else None), _fmt(row["macs"] / 1e6 if row["macs"] else None, 2),
            top1, f"{row['ok']}/{row['runs']}", _fmt(row["throughput_b1"], 0), _fmt(row["throughput_bN"], 0),
            _fmt(row["latency_b1_ms"], 2), _fmt(row["train_throughput"], 0), _fmt(row["peak_mem_mb"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(directory: str | Path, records: list[dict[str, Any]], columns: list[str]) -> tuple[Path, Path]:
    """``results.csv`` (one row per run) and ``results.md`` (one row per configuration), written atomically."""
    directory = Path(directory)
    fields = ["run_id", "status", *columns, "seed", *METRICS, "val_loss", "epochs", "train_time_s", "wall_time_s",
              "device", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, **record.get("labels", {})})
    csv_path, md_path = directory / "results.csv", directory / "results.md"
    atomic_write(csv_path, buffer.getvalue().encode())
    atomic_write(md_path, markdown_table(aggregate(records), columns).encode())
    return csv_path, md_path
