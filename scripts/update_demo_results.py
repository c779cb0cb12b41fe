"""Regenerate the shipped demo results and the README's ablation table from ONE run of the demo.

    python scripts/update_demo_results.py            # run examples/demo.sh from scratch (runs/mixer_ablation is
                                                     # removed first, so nothing is resumed), then update
    python scripts/update_demo_results.py --no-run   # update from the runs/mixer_ablation of the last demo
    python scripts/update_demo_results.py --check    # exit 1 when the README's table is not the shipped results

What it writes: ``examples/mixer_ablation_results/`` (results.jsonl, results.csv, results.md, the plots and
machine.json: the CPU, core count, load and wall time of the run) and the block of README.md between the
``demo-results`` markers. The table is results.md as the sweep wrote it, whatever its columns are.
tests/test_demo_drift.py fails when these drift from what the current code computes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "runs" / "mixer_ablation"
SHIPPED = ROOT / "examples" / "mixer_ablation_results"
README = ROOT / "README.md"
BEGIN = "<!-- demo-results:begin (scripts/update_demo_results.py writes this block) -->"
END = "<!-- demo-results:end -->"
FILES = ("results.jsonl", "results.csv", "results.md")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(wall_s: float | None, load_before: tuple[float, ...] | None) -> dict[str, Any]:
    import torch

    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__, "wall_s": wall_s,
            "load_avg_before": list(load_before) if load_before else None, "load_avg_after": list(os.getloadavg()),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def readme_block(results_md: str, info: dict[str, Any], measure_batch: int | None = None) -> str:
    """The README's block: where and how the numbers were measured, then the sweep's own table."""
    import textwrap

    wall = f"took {info['wall_s']:.0f} s wall" if info.get("wall_s") else "ran"
    load = info.get("load_avg_before")
    busy = f" (load average {load[0]:.2f} when it started: other jobs shared the machine)" if load and load[0] >= 0.5 else ""
    batch = f" bN is batch {measure_batch}." if measure_batch else ""
    text = (f"This table is `examples/mixer_ablation_results/results.md`, written by one run of `make demo` "
            f"(regenerated with `python scripts/update_demo_results.py`). That run {wall} on a {info['cpus']}-core "
            f"machine, CPU \"{info['cpu']}\" (/proc/cpuinfo), torch {info['torch']}, {info['date']}{busy}. "
            f"The accuracies, parameters, MACs and memory are deterministic (seeded, on CPU): the demo gives the "
            f"same on every run, and `tests/test_demo_drift.py` fails when the code no longer does. The speed "
            f"columns (img/s, latency) are timings from that run, taken after all training, one model at a time "
            f"on one thread, alternating with the reference (the first mixer): ±% is their spread and 'bN vs ref' "
            f"the median ratio to the reference. They vary from run to run and machine to machine.{batch}")
    return f"{BEGIN}\n{textwrap.fill(text, width=116, break_on_hyphens=False)}\n\n{results_md.strip()}\n{END}"


def current_block(readme: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN!r} ... {END!r} block")
    start = readme.index(BEGIN)
    return readme[start:readme.index(END, start) + len(END)]


def expected_block() -> str:
    info = json.loads((SHIPPED / "machine.json").read_text())
    records = [json.loads(line) for line in (SHIPPED / "results.jsonl").read_text().splitlines() if line.strip()]
    batch = next((r["measure_batch"] for r in records if r.get("measure_batch")), None)
    return readme_block((SHIPPED / "results.md").read_text(), info, batch)


def run_demo() -> dict[str, Any]:
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)  # from scratch: no finished run is kept from an older code
    load = os.getloadavg()
    start = time.perf_counter()
    log = ROOT / "runs" / "demo.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"examples/demo.sh failed (exit {proc.returncode}); see {log}")
    info = machine(wall, load)
    (RUN_DIR / "machine.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"demo finished in {wall:.0f} s (log: {log})")
    return info


def update(info: dict[str, Any] | None) -> None:
    if info is None:
        saved = RUN_DIR / "machine.json"
        info = json.loads(saved.read_text()) if saved.is_file() else machine(None, None)
    for name in FILES:
        shutil.copyfile(RUN_DIR / name, SHIPPED / name)
    for png in SHIPPED.glob("*.png"):
        png.unlink()
    for png in sorted((RUN_DIR / "plots").glob("*.png")):
        shutil.copyfile(png, SHIPPED / png.name)
    (SHIPPED / "machine.json").write_text(json.dumps(info, indent=1) + "\n")
    readme = README.read_text()
    README.write_text(readme.replace(current_block(readme), expected_block()))
    print(f"updated {SHIPPED.relative_to(ROOT)}/ and the README's table")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="use the existing runs/mixer_ablation")
    parser.add_argument("--check", action="store_true", help="only check that the README shows the shipped results")
    args = parser.parse_args()
    if args.check:
        same = current_block(README.read_text()) == expected_block()
        print("README table = shipped results" if same else "README table differs from the shipped results")
        return 0 if same else 1
    update(None if args.no_run else run_demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
