"""Render benchmarks/results/*.jsonl (written by run_all.py) as the markdown tables of RESULTS.md.

    python benchmarks/report.py [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ms(row: dict, side: str) -> str:
    value, span = row[side], row[f"{side}_range"]
    return f"{1e3 * value:.0f} ({1e3 * span[0]:.0f}-{1e3 * span[1]:.0f})" if span else f"{1e3 * value:.0f}"


def vs_timm(reports: list[dict]) -> str:
    lines = ["| recipe (timm model) | inference b1 ms ours / timm | ratio | inference b8 ms ours / timm | ratio | "
             "train step b8 ms ours / timm | ratio | peak train MB, first steps, ours / timm | ratio | "
             "peak train MB, steady state, ours / timm | ratio | grad ckpt MB (saving) | max diff | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        rows = {row["what"]: row for row in r["rows"]}
        cells = [f"{r['name']} ({r['against'].removeprefix('timm ')})"]
        for what in ("inference b1", "inference b8", "train step b8"):
            row = rows.get(what)
            cells += [f"{_ms(row, 'ours')} / {_ms(row, 'other')}", f"**{row['ratio']:.2f}**"] if row else ["-", "-"]
        for what in ("peak train memory b8, first steps", "peak train memory b8, steady state"):
            mem = rows.get(what)
            cells += [f"{mem['ours'] / 2**20:.1f} / {mem['other'] / 2**20:.1f}", f"**{mem['ratio']:.3f}**"] if mem else ["-", "-"]
        ckpt = next((row for what, row in rows.items() if "grad_checkpointing" in what), None)
        cells.append(f"{ckpt['ours'] / 2**20:.0f} ({ckpt['ratio']:.2f}x less)" if ckpt else "-")
        cells.append(f"{r['max_abs_diff']:.0e}" if r["max_abs_diff"] is not None else "-")
        cells.append(" ".join(f"{v:.1f}" for v in r["conditions"]["load_avg"][:1]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deploy(reports: list[dict]) -> str:
    lines = ["| recipe | inference b1 ms deployed / plain | speed-up | inference b8 ms deployed / plain | speed-up | "
             "max diff | load avg |", "|---|---|---|---|---|---|---|"]
    for r in reports:
        rows = {row["what"]: row for row in r["rows"]}
        cells = [r["name"].removesuffix(" deployed")]
        for what in ("inference b1", "inference b8"):
            row = rows.get(what)
            cells += [f"{_ms(row, 'ours')} / {_ms(row, 'other')}", f"**{row['ratio']:.2f}**"] if row else ["-", "-"]
        cells.append(f"{r['max_abs_diff']:.0e}")
        cells.append(f"{r['conditions']['load_avg'][0]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    for file, render in (("vs_timm.jsonl", vs_timm), ("deploy.jsonl", deploy)):
        path = args.out / file
        if path.exists():
            reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            print(f"### {file}\n\n{render(reports)}\n")


if __name__ == "__main__":
    main()
