"""The sweep's results: an append-only JSONL file (the source of truth), plus CSV and markdown views of it.

Every append rewrites the file through a temporary file and a rename, so after a crash at any moment the file is
the old one or the old one plus the new line: never a torn line, never a lost one. One writer per sweep directory
(the driver) is ensured with an exclusive lock.

Two kinds of record: a run's (``run_id``, ``status``, accuracy, params, MACs; the latest record of a run wins) and a
configuration's measurement (``kind: measure``: speed and memory measured after training, shared by the seeds of
the configuration; see driver.measure_phase).

The file heals: a line that is not a valid record (torn, NUL bytes, not JSON, ``{}``, missing fields) is reported
with its file and line and skipped; ``heal`` (the driver, under the lock) moves such lines to
``results.rejected.jsonl`` and rewrites the file without them, and the run they belonged to, having no valid record,
is run again.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from metablocks.train.checkpoint import atomic_write

RESULTS = "results.jsonl"
REJECTED = "results.rejected.jsonl"
METRICS = ("params", "macs", "throughput_b1", "latency_b1_ms", "throughput_bN", "latency_bN_ms", "train_throughput",
           "peak_mem_mb", "top1", "best_top1")
MEASURED = ("throughput_b1", "latency_b1_ms", "throughput_bN", "latency_bN_ms", "train_throughput", "peak_mem_mb")
SPREADS = ("throughput_b1", "throughput_bN", "train_throughput")  # measured with _min, _max, _ratio
RUN_FIELDS = {"run_id": str, "status": str, "config": str, "labels": dict, "seed": int}
MEASURE_FIELDS = {"config": str, "settings": dict}


class SweepLocked(RuntimeError):
    pass


class SweepDirError(RuntimeError):
    """A sweep directory that is missing or cannot be read; the message is one line saying which and why."""


@dataclass(frozen=True)
class BadLine:
    """A line of results.jsonl that is not a valid record."""

    file: Path
    line: int
    reason: str
    text: bytes

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def record_problem(record: Any) -> str | None:
    """Why ``record`` (parsed JSON) is not a valid run or measurement record, or None."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, this line holds a {type(record).__name__}"
    kind = record.get("kind", "run")
    fields = {"run": RUN_FIELDS, "measure": MEASURE_FIELDS}.get(kind)
    if fields is None:
        return f"unknown record kind {kind!r}; kinds: run, measure"
    missing = [k for k in fields if k not in record]
    if missing:
        return f"the record lacks {', '.join(missing)}"
    wrong = [f"{k} ({type(record[k]).__name__}, not {t.__name__})" for k, t in fields.items()
             if not isinstance(record[k], t) or isinstance(record[k], bool)]
    if wrong:
        return f"wrong types: {', '.join(wrong)}"
    if kind == "run":
        if record["status"] not in ("ok", "failed"):
            return f"status {record['status']!r} is not ok or failed"
        if record["status"] == "ok" and not isinstance(record.get("top1"), (int, float)):
            return f"an ok record needs a number top1, given {record.get('top1')!r}"
    return None


class ResultStore:
    """``DIR/results.jsonl``: one JSON record per finished run (ok or failed) and per measured configuration."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / RESULTS
        self._lock: int | None = None

    def lock(self) -> ResultStore:
        """Hold the sweep directory's lock (released when the process ends, however it ends)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise SweepDirError(f"{self.dir} is a file, not a sweep directory")
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

    def _raw(self) -> bytes:
        if not self.path.exists():
            return b""
        try:
            return self.path.read_bytes()
        except OSError as err:
            raise SweepDirError(f"cannot read {self.path}: {err.strerror}") from None

    def read(self) -> tuple[list[dict[str, Any]], list[BadLine]]:
        """(valid records in file order, the lines that are not valid records)."""
        data = self._raw()
        records, bad = [], []
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip(b" \t\r"):
                continue
            torn = number == len(lines)  # no newline after it: a write that was cut off, or an edit
            reason = None
            if b"\0" in raw:
                reason = "NUL bytes in the line"
            else:
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    reason = "not UTF-8 text"
                except json.JSONDecodeError as err:
                    what = "torn line (cut off: " if torn else "not valid JSON ("
                    reason = f"{what}{err.msg} at column {err.colno})"
                else:
                    reason = record_problem(record)
            if reason is None:
                records.append(record)
            else:
                bad.append(BadLine(self.path, number, reason, raw))
        return records, bad

    def records(self) -> list[dict[str, Any]]:
        """Every valid record, in file order (invalid lines skipped: see ``read``)."""
        return self.read()[0]

    def latest(self) -> dict[str, dict[str, Any]]:
        """run_id -> its latest run record."""
        return {r["run_id"]: r for r in self.records() if r.get("kind", "run") == "run"}

    def measurements(self) -> dict[str, dict[str, Any]]:
        """configuration key -> its latest measurement record."""
        return {r["config"]: r for r in self.records() if r.get("kind") == "measure"}

    def heal(self) -> list[str]:
        """Move invalid lines to results.rejected.jsonl and rewrite the file without them (hold the lock);
        returns one note per line moved."""
        records, bad = self.read()
        if not bad:
            return []
        rejected = self.dir / REJECTED
        old = rejected.read_bytes() if rejected.is_file() else b""
        atomic_write(rejected, old + b"".join(b.text + b"\n" for b in bad))
        atomic_write(self.path, "".join(_line(r) for r in records).encode())
        return [f"{b}: skipped (moved to {REJECTED}); a run without a valid record runs again" for b in bad]

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (non-finite numbers are written as null: the file stays strict JSON)."""
        old = self._raw()
        if old and not old.endswith(b"\n"):
            old += b"\n"  # never glue a record to a line that was cut off
        atomic_write(self.path, old + _line(record).encode())


def _line(record: dict[str, Any]) -> str:
    return json.dumps(_finite(record), sort_keys=True, allow_nan=False, default=str) + "\n"


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


def aggregate(records: Iterable[dict[str, Any]],
              measurements: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per configuration (runs that differ only by seed), in first-seen order: top-1 mean ± std over the
    seeds that finished, params and MACs, speed and memory from the configuration's measurement (with its spread
    and ratio to the reference; averaged from the runs for sweeps measured before there were measurements), and the
    failures with their reasons."""
    measurements = measurements or {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["config"], []).append(record)
    rows = []
    for key, runs in groups.items():
        ok = [r for r in runs if r["status"] == "ok"]
        row: dict[str, Any] = {"config": key, **runs[0]["labels"], "runs": len(runs), "ok": len(ok),
                               "seeds": sorted(r["seed"] for r in ok)}
        row["top1_mean"], row["top1_std"] = _mean_std([r["top1"] for r in ok])
        measured = measurements.get(key) if ok else None
        for metric in METRICS[:-2]:
            if measured is not None and metric in MEASURED:
                row[metric] = measured.get(metric)
                continue
            values = [r[metric] for r in ok if r.get(metric) is not None]
            row[metric] = statistics.fmean(values) if values else None
        if measured is not None:
            row["measured"] = True
            row["reference"] = measured.get("reference")
            for metric in SPREADS:
                for suffix in ("_min", "_max", "_ratio"):
                    row[metric + suffix] = measured.get(metric + suffix)
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


def _spread_pct(row: dict[str, Any], metric: str) -> str:
    low, high, mid = row.get(metric + "_min"), row.get(metric + "_max"), row.get(metric)
    if low is None or high is None or not mid:
        return ""
    return f" ±{100 * max(high - mid, mid - low) / mid:.0f}%"


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The aggregated rows as a GitHub markdown table (numbers rounded for reading; the JSONL has them exact).
    Speeds show the largest distance of a round from the median (±%), and ``vs ref`` the batch-N inference
    throughput relative to the sweep's reference model timed alongside."""
    head = [*columns, "params (K)", "MACs (M)", "top-1 % (mean ± std)", "seeds", "img/s b1", "img/s bN",
            "latency b1 (ms)", "train img/s", "peak mem (MiB)"]
    ratio = any(row.get("throughput_bN_ratio") is not None for row in rows)
    if ratio:
        head.append("bN vs ref")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["ok"]:
            top1 = f"{row['top1_mean']:.2f}" + (f" ± {row['top1_std']:.2f}" if row["ok"] > 1 else "")  # no spread of one
        else:
            top1 = "failed: " + "; ".join(row["errors"])[:120].replace("|", "/")
        cells = [str(row.get(c, "")) for c in columns] + [
            _fmt(row["params"] / 1e3 if row["params"] else None), _fmt(row["macs"] / 1e6 if row["macs"] else None, 2),
            top1, f"{row['ok']}/{row['runs']}",
            _fmt(row["throughput_b1"], 0) + _spread_pct(row, "throughput_b1"),
            _fmt(row["throughput_bN"], 0) + _spread_pct(row, "throughput_bN"),
            _fmt(row["latency_b1_ms"], 2), _fmt(row["train_throughput"], 0) + _spread_pct(row, "train_throughput"),
            _fmt(row["peak_mem_mb"], 1)]
        if ratio:
            cells.append(_fmt(row.get("throughput_bN_ratio"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(directory: str | Path, records: list[dict[str, Any]], columns: list[str],
                 measurements: dict[str, dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """``results.csv`` (one row per run, with its configuration's measurement) and ``results.md`` (one row per
    configuration), written atomically."""
    directory = Path(directory)
    measurements = measurements or {}
    spread = [m + s for m in SPREADS for s in ("_min", "_max", "_ratio")]
    fields = ["run_id", "status", *columns, "seed", *METRICS, *spread, "val_loss", "epochs", "train_time_s",
              "wall_time_s", "device", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        measured = measurements.get(record["config"], {}) if record["status"] == "ok" else {}
        shared = {k: v for k, v in measured.items() if k in (*MEASURED, *spread)}
        writer.writerow({**record, **shared, **record.get("labels", {})})
    csv_path, md_path = directory / "results.csv", directory / "results.md"
    atomic_write(csv_path, buffer.getvalue().encode())
    atomic_write(md_path, markdown_table(aggregate(records, measurements), columns).encode())
    return csv_path, md_path
