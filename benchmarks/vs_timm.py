"""Ours vs timm with the same weights, timed interleaved in one process (CPU fp32 inference by default).

    python benchmarks/vs_timm.py [--models poolformer_s12 convformer_s18 caformer_s18] [--batch 8] [--repeats 15]

Reports median and min-max milliseconds per forward for each, and the speed ratio = timm time / our time
(throughput ours / throughput timm): 1.00 is as fast as timm, above is faster.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import metablocks
from metablocks.interop.timm import load_timm_state_dict


def timed(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def compare(name: str, batch: int, repeats: int, warmup: int = 3, size: int = 224) -> dict[str, float]:
    import timm

    theirs = timm.create_model(name).eval()
    ours = load_timm_state_dict(metablocks.create_model(name).eval(), theirs.state_dict())
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
        for _ in range(warmup):
            ours(x), theirs(x)
        t_ours, t_timm = [], []
        for i in range(repeats):  # interleaved, alternating who goes first, so drift hits both alike
            if i % 2:
                t_ours.append(timed(ours, x)), t_timm.append(timed(theirs, x))
            else:
                t_timm.append(timed(theirs, x)), t_ours.append(timed(ours, x))
    m_ours, m_timm = statistics.median(t_ours), statistics.median(t_timm)
    return dict(ours_ms=1e3 * m_ours, ours_min=1e3 * min(t_ours), ours_max=1e3 * max(t_ours), timm_ms=1e3 * m_timm,
                timm_min=1e3 * min(t_timm), timm_max=1e3 * max(t_timm), ratio=m_timm / m_ours, max_diff=diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["poolformer_s12", "convformer_s18", "caformer_s18"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"fp32 inference, batch {args.batch} @224, median of {args.repeats} (min-max)")
    print(f"| model | ours ms | timm ms | speed ratio (timm/ours) | max logit diff |")
    print(f"|---|---|---|---|---|")
    for name in args.models:
        r = compare(name, args.batch, args.repeats)
        print(f"| {name} | {r['ours_ms']:.1f} ({r['ours_min']:.1f}-{r['ours_max']:.1f}) | {r['timm_ms']:.1f} "
              f"({r['timm_min']:.1f}-{r['timm_max']:.1f}) | {r['ratio']:.3f} | {r['max_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
