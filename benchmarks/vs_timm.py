"""Ours vs timm with the same weights, timed interleaved in one process (CPU fp32 inference by default).

    python benchmarks/vs_timm.py [--models poolformer_s12 convformer_s18 caformer_s18] [--batch 8] [--repeats 15]
                                 [--train] [--threads N]

Reports median and min-max milliseconds per forward for each, and the speed ratio = timm time / our time
(throughput ours / throughput timm): 1.00 is as fast as timm, above is faster. ``--train`` adds a row per model
for one training step (forward, cross-entropy, backward, AdamW). The timing is metablocks.analysis.bench
(rounds in rotating order, warm-up, median); ``metablocks bench NAME --vs-timm`` gives the full report.
"""
from __future__ import annotations

import argparse
import platform

import torch

from metablocks.analysis import bench


def compare(name: str, batch: int, repeats: int, warmup: int = 3, size: int = 224, train: bool = False) -> bench.Report:
    timm_name = bench.timm_name_of(name) or name
    theirs = bench.build_timm(timm_name, img_size=size)
    ours = bench.same_weights(bench.build_ours(name, img_size=size), theirs, timm_name)
    return bench.compare(ours, theirs, name=name, against=timm_name, batches=(batch,), train_batch=batch if train else None,
                         img_size=size, repeats=repeats, warmup=warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["poolformer_s12", "convformer_s18", "caformer_s18"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--train", action="store_true", help="also time one training step per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = bench.conditions()["load_avg"]
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"fp32, batch {args.batch} @224, median of {args.repeats} (min-max), load avg {load}")
    print("| model | ours ms | timm ms | speed ratio (timm/ours) | max logit diff |")
    print("|---|---|---|---|---|")
    for name in args.models:
        r = compare(name, args.batch, args.repeats, train=args.train)
        for row in r.rows:
            label = name if row.what.startswith("inference") else f"{name} ({row.what})"
            print(f"| {label} | {bench.Timing([row.ours_range[0], row.ours, row.ours_range[1]]).ms()} | "
                  f"{bench.Timing([row.other_range[0], row.other, row.other_range[1]]).ms()} | {row.ratio:.3f} | "
                  f"{r.max_abs_diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
