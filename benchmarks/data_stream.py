"""Streaming vs in-memory image folders: peak memory and training images/s of one epoch.

    python benchmarks/data_stream.py --root /tmp/mb_jpegs --sizes 5000 50000 [--rounds 3] [--workers 2]

Writes synthetic JPEG image folders (10 classes, ``--px`` pixels square, generated once under ``--root``; keep
them out of the repository), then trains one epoch of a narrow version of the mixer-ablation demo's model
(examples/mixer_ablation.yaml with widths 16/32/48, at 64 px, batch 64, one torch thread) from each: with the
streaming loader at every size, and with the in-memory path at the smallest size. Each run is a fresh child process; the parent samples the child's process tree every
20 ms for peak memory: RSS of the training process, and PSS summed over it and its DataLoader workers (PSS counts
pages the processes share once, where summed RSS would count them once per process). Images/s is the training loop's
(every step, the wait for the loader included; the in-memory path's up-front decode is not in it, it is in the wall
time). Rounds alternate stream and memory at the small size, so both see the same machine load. Results are
appended as JSON lines to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_folder(root: Path, count: int, px: int, classes: int = 10) -> Path:
    """``count`` JPEGs in ``classes`` class folders: a class colour, a random gradient and noise (written once)."""
    import numpy as np
    from PIL import Image

    folder = root / f"jpeg{count}_{px}px"
    done = folder / ".complete"
    if done.is_file():
        return folder
    rng = np.random.default_rng(count)
    colours = rng.integers(40, 216, (classes, 3))
    ramp = np.linspace(-40, 40, px)[None, :, None]
    for i in range(count):
        label = i % classes
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        image = colours[label] + ramp * rng.choice([-1, 1]) + rng.normal(0, 25, (px, px, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"class{label}" / f"{i:06d}.jpg",
                                                                 quality=90)
    done.write_text(str(count))
    return folder


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(folder: Path, loader: str, workers: int, img_size: int) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), "--loader", loader, "--workers", str(workers),
               "--img-size", str(img_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = {"rss_main_mb": 0.0, "pss_tree_mb": 0.0, "rss_tree_mb": 0.0, "processes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _tree(proc.pid)
            peak["rss_main_mb"] = max(peak["rss_main_mb"], _kib(f"/proc/{proc.pid}/status", "VmRSS:") / 1024)
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) / 1024
            rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids) / 1024
            peak["pss_tree_mb"], peak["rss_tree_mb"] = max(peak["pss_tree_mb"], pss), max(peak["rss_tree_mb"], rss)
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, **peak, "wall_s": time.perf_counter() - start}


def child(folder: str, loader: str, workers: int, img_size: int) -> None:
    import resource

    from metablocks.data import DataConfig
    from metablocks.sweep import Sweep
    from metablocks.train import TrainConfig, train

    recipe = Sweep.load(ROOT / "examples" / "mixer_ablation.yaml").base_recipe()
    recipe["stages"] = [{**stage, "dim": dim} for stage, dim in zip(recipe["stages"], (16, 32, 48))]
    recipe["img_size"] = img_size
    data = DataConfig(source="imagefolder", path=folder, img_size=img_size, loader=loader, workers=workers,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    config = TrainConfig(epochs=1, batch_size=64, threads=1, warmup_epochs=0, track=())
    start = time.perf_counter()
    result = train(recipe, data=data, config=config)
    print(json.dumps({"loader": loader, "workers": workers if loader == "stream" else 0, "files": result["train_size"]
                      + result["val_size"], "train_images": result["train_size"],
                      "images_per_s": result["train_throughput"], "epoch_s": result["train_time_s"],
                      "run_s": time.perf_counter() - start, "top1": result["top1"],
                      "vmhwm_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/mb_jpegs", help="where the image folders are written")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--px", type=int, default=64, help="side of the generated JPEGs")
    parser.add_argument("--img-size", type=int, default=64, help="training resolution")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating stream/memory rounds at the small size")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_stream.jsonl"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loader", default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.loader, args.workers, args.img_size)
        return
    sizes = sorted(args.sizes)
    folders = {}
    for n in sizes:
        start = time.perf_counter()
        folders[n] = make_folder(Path(args.root), n, args.px)
        print(f"{folders[n]}: ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = []

    def record(row: dict) -> None:
        row.update(load_average=os.getloadavg(), cpus=os.cpu_count(), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")

    small = sizes[0]
    for _ in range(args.rounds):
        for loader in ("stream", "memory"):
            record(run_child(folders[small], loader, args.workers, args.img_size))
    for n in sizes[1:]:
        record(run_child(folders[n], "stream", args.workers, args.img_size))

    def median(loader: str, files: int, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["loader"] == loader and r["files"] == files)

    pairs = zip(rows[0:2 * args.rounds:2], rows[1:2 * args.rounds:2])  # (stream, memory) of each round
    ratios = [s["images_per_s"] / m["images_per_s"] for s, m in pairs]
    print(f"\nimages/s at {small} files: stream {median('stream', small, 'images_per_s'):.0f}, memory "
          f"{median('memory', small, 'images_per_s'):.0f}; stream/memory per round {[round(r, 3) for r in ratios]}, "
          f"median {statistics.median(ratios):.3f}")
    for n in sizes:
        print(f"stream, {n} files: peak RSS main {median('stream', n, 'rss_main_mb'):.0f} MB, PSS of the process "
              f"tree {median('stream', n, 'pss_tree_mb'):.0f} MB")
    print(f"memory, {small} files: peak RSS main {median('memory', small, 'rss_main_mb'):.0f} MB")
    if len(sizes) > 1:
        big = sizes[-1]
        print(f"stream peak memory {big} / {small} files: RSS main "
              f"{median('stream', big, 'rss_main_mb') / median('stream', small, 'rss_main_mb'):.3f}, PSS tree "
              f"{median('stream', big, 'pss_tree_mb') / median('stream', small, 'pss_tree_mb'):.3f}")


if __name__ == "__main__":
    main()
