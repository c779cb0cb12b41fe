"""Every timm-covered family against timm (same weights), and deploy speed-ups, into JSON + markdown tables.

    python benchmarks/run_all.py [--timm poolformer_s12 ...] [--deploy convnext_atto ...] [--repeats 9] [--threads 1]
                                 [--out benchmarks/results]

One representative (small) size per family. Each report is appended to OUT/vs_timm.jsonl or OUT/deploy.jsonl as
soon as it is measured and printed as a markdown table; see metablocks/analysis/bench.py for the method.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metablocks.analysis import bench

TIMM = ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18", "convnext_atto", "inception_next_atto",
        "mixer_s16_224", "swin_t", "resnet50"]
DEPLOY = ["poolformer_s12", "convnext_atto", "inception_next_atto", "unireplknet_a", "replknet_31b", "resnet50"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timm", nargs="*", default=TIMM)
    parser.add_argument("--deploy", nargs="*", default=DEPLOY)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.timm:
        try:
            report = bench.compare_with_timm(name, repeats=args.repeats, threads=args.threads)
        except Exception as err:  # noqa: BLE001 - record and go on with the other families
            print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        with open(args.out / "vs_timm.jsonl", "a") as f:
            f.write(json.dumps(report.to_json()) + "\n")
        print(report.table(), "\n", report.conditions, "\n", flush=True)
    for name in args.deploy:
        try:
            report = bench.compare_deploy(name, repeats=args.repeats)
        except Exception as err:  # noqa: BLE001
            print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        with open(args.out / "deploy.jsonl", "a") as f:
            f.write(json.dumps(report.to_json()) + "\n")
        print(report.table(), "\n", report.conditions, "\n", flush=True)


if __name__ == "__main__":
    main()
