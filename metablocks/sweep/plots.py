"""Sweep plots (matplotlib, PNG): top-1 against MACs, params and throughput with the Pareto front, and learning curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

MARKERS = "osD^v<>pPhX*8"


def pareto(points: list[tuple[float, float]], cost_higher_is_better: bool = False) -> list[int]:
    """Indices of the points no other point beats: higher accuracy (y) at lower cost (x), or higher x if
    ``cost_higher_is_better`` (throughput). Sorted along x."""
    def better_x(a: float, b: float) -> bool:
        return a >= b if cost_higher_is_better else a <= b

    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(better_x(x2, x) and y2 >= y and (x2, y2) != (x, y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


AXES = {  # metric -> (axis label, scale, higher is better, title)
    "macs": ("MACs (M) per image", 1e-6, False, "MACs"),
    "params": ("parameters (K)", 1e-3, False, "parameters"),
    "throughput_bN": ("inference throughput (images/s, batch N)", 1.0, True, "throughput"),
}


def plot_tradeoffs(rows: list[dict[str, Any]], group_by: str | None, out_dir: Path, title: str) -> list[Path]:
    """One PNG per cost axis: a marker per value of ``group_by`` (the mixer), error bars over seeds (top-1) and over
    measurement rounds (throughput, min to max), the front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["ok"] and r.get("macs") is not None]
    groups = list(dict.fromkeys(str(r.get(group_by, r["config"])) for r in rows)) if group_by else []
    written = []
    for metric, (label, scale, higher, name) in AXES.items():
        points = [(r[metric] * scale, r["top1_mean"]) for r in rows if r.get(metric) is not None]
        usable = [r for r in rows if r.get(metric) is not None]
        if not usable:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
        for i, row in enumerate(usable):
            group = str(row.get(group_by, row["config"])) if group_by else row["config"]
            k = groups.index(group) if group in groups else 0
            low, high = row.get(f"{metric}_min"), row.get(f"{metric}_max")  # the measurement's spread over rounds
            xerr = [[points[i][0] - low * scale], [high * scale - points[i][0]]] if low is not None and high else None
            ax.errorbar(points[i][0], points[i][1], xerr=xerr, yerr=row["top1_std"] or 0, fmt=MARKERS[k % len(MARKERS)],
                        color=f"C{k % 10}", ms=8, capsize=3,
                        label=group if group not in ax.get_legend_handles_labels()[1] else None)
        front = pareto(points, cost_higher_is_better=higher)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, alpha=0.7, zorder=0,
                label="Pareto front")
        for i in front:
            ax.scatter(*points[i], s=220, facecolors="none", edgecolors="k", lw=1.2, zorder=3)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{title}: top-1 vs {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"top1_vs_{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_curves(rows: list[dict[str, Any]], group_by: str | None, out_dir: Path, title: str) -> Path | None:
    """Validation top-1 and training loss per epoch (mean over seeds), one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["ok"] and r.get("curve_top1")]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    names = [str(row.get(group_by, row["config"])) if group_by else row["config"] for row in rows]
    for k, row in enumerate(rows):
        epochs = range(1, len(row["curve_top1"]) + 1)
        name = names[k] if names.count(names[k]) == 1 else row["config"]
        style = dict(color=f"C{k % 10}", marker=MARKERS[k % len(MARKERS)], ms=4)
        left.plot(epochs, row["curve_top1"], label=name, **style)
        right.plot(epochs, row["curve_train_loss"], label=name, **style)
    left.set(xlabel="epoch", ylabel="validation top-1 (%)", title=f"{title}: validation top-1")
    right.set(xlabel="epoch", ylabel="training loss", title="training loss (label-smoothed CE)")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    left.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "learning_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path
