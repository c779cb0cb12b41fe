"""Throughput and memory: ours vs timm (same weights), timed interleaved in one process.

Method (what ``metablocks bench`` and ``benchmarks/vs_timm.py`` report):

* **Timing.** Every contender is warmed up, then timed ``repeats`` times in rounds; each round runs every
  contender once, in an order that rotates from round to round, so load drift on a shared machine hits all
  of them alike. We report the median and the min-max of the rounds.
* **Speed ratio** = other time / our time (median over median), e.g. timm ms / ours ms: ``1.00`` is as fast as
  timm, above 1 is faster. The same definition is used for the deploy speed-up (plain ms / deployed ms).
* **Inference**: ``model.eval()`` under ``torch.inference_mode()``, one forward per timing.
* **Training step**: ``model.train()``, forward, cross-entropy on random labels, backward, ``AdamW.step()`` and
  ``zero_grad(set_to_none=True)``, one step per timing.
* **Peak memory** (``peak_train_memory``): each model in a fresh subprocess; after building the model, the
  optimizer and the batch (and ``warmup_steps`` training steps), we reset the kernel's resident-set high-water mark
  (``/proc/self/clear_refs`` <- 5) and read it (``VmHWM`` in ``/proc/self/status``), run ``steps`` training steps
  and read it again: the delta is the peak extra memory training needs. From a cold start (``warmup_steps=0``) it
  includes the AdamW state and one-time process costs of the first step (oneDNN kernels JIT-compiled and cached
  for the shapes seen, lazily paged-in code); in the steady state (``warmup_steps=1``) it is activations, gradients
  and allocator slack, what every later step of a training run needs. (``ru_maxrss`` would be wrong here: Linux
  carries it over from the parent process.) CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated
  before the steps.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn


@dataclass
class Timing:
    """Seconds per call over ``len(samples)`` timed calls."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def ms(self) -> str:
        """``12.3 (11.9-14.0)``: median and min-max in milliseconds."""
        return f"{1e3 * self.median:.1f} ({1e3 * self.min:.1f}-{1e3 * self.max:.1f})"


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 15, warmup: int = 3,
                     device: torch.device | str | None = None) -> dict[str, Timing]:
    """Time each callable ``repeats`` times in rotating order after ``warmup`` untimed calls each."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(s) for name, s in samples.items()}


def inference_call(model: nn.Module, x: torch.Tensor, *, autocast: torch.dtype | None = None) -> Callable[[], Any]:
    """One eval-mode forward under inference_mode (and autocast to ``autocast`` when given)."""
    model.eval()

    def call() -> Any:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            return model(x)

    return call


def train_step_call(model: nn.Module, x: torch.Tensor, *, num_classes: int | None = None, lr: float = 1e-4,
                    autocast: torch.dtype | None = None) -> Callable[[], float]:
    """One training step: forward, cross-entropy on fixed random labels, backward, AdamW step, zero_grad."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    classes = num_classes or getattr(model, "num_classes", None) or 1000
    target = torch.randint(0, classes, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)

    def step() -> float:
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


# ------------------------------------------------------------------------------------------------ building models
def build_ours(spec: str, *, img_size: int | None = None, **fields: Any) -> nn.Module:
    """Our model from a recipe file or shipped name."""
    import metablocks

    if img_size is not None:
        fields["img_size"] = img_size
    return metablocks.build_model(spec, **fields)


def timm_name_of(spec: str) -> str | None:
    """The ``timm_name`` a recipe records (None when timm has no such model)."""
    from metablocks.recipe import load_recipe

    return load_recipe(spec).timm_name


def build_timm(name: str, *, img_size: int | None = None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {}
    if img_size is not None and img_size != 224:
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, **kwargs)


def same_weights(ours: nn.Module, theirs: nn.Module, timm_name: str | None = None) -> nn.Module:
    """Load ``theirs``' weights into ``ours`` (strict) and return ours."""
    from metablocks.interop.timm import load_timm_state_dict

    return load_timm_state_dict(ours, theirs.state_dict(), timm_name)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    fn = getattr(model, "set_grad_checkpointing", None)
    if not callable(fn):
        raise ValueError(f"{type(model).__name__} has no set_grad_checkpointing()")
    fn(enable)


# ------------------------------------------------------------------------------------------------ peak memory
_PEAK_SCRIPT = r"""
import json, resource, sys, torch
args = json.loads(sys.argv[1])

def high_water():
    # VmHWM of this process's own address space (a fresh one after exec), reset to the current RSS by clear_refs 5;
    # ru_maxrss is not used: Linux carries it over from the parent across fork + exec.
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

def reset_high_water():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

torch.set_num_threads(args["threads"])
torch.manual_seed(0)
from metablocks.analysis import bench
if args["which"] == "timm":
    model = bench.build_timm(args["name"], img_size=args["img_size"])
else:
    model = bench.build_ours(args["name"], img_size=args["img_size"])
if args["grad_checkpointing"]:
    bench.set_grad_checkpointing(model, True)
if args["channels_last"]:
    model = model.to(memory_format=torch.channels_last)
device = torch.device(args["device"])
model = model.to(device)
x = torch.randn(args["batch"], 3, args["img_size"], args["img_size"], device=device)
if args["channels_last"]:
    x = x.contiguous(memory_format=torch.channels_last)
step = bench.train_step_call(model, x)
for _ in range(args["warmup_steps"]):
    step()
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
else:
    reset_high_water()
    before = high_water()
for _ in range(args["steps"]):
    step()
if device.type == "cuda":
    torch.cuda.synchronize(); after = torch.cuda.max_memory_allocated()
else:
    after = high_water()
print("PEAK", json.dumps({"peak_bytes": after - before}))
"""


def peak_train_memory(name: str, *, which: str = "ours", batch: int = 8, img_size: int = 224, steps: int = 2,
                      warmup_steps: int = 0, grad_checkpointing: bool = False, channels_last: bool = False,
                      device: str = "cpu", threads: int | None = None, timeout: float = 900) -> int:
    """Peak extra bytes of ``steps`` training steps of one model after ``warmup_steps`` unmeasured ones, measured in
    a fresh subprocess (see module doc).

    ``which`` is "ours" (``name`` a recipe file or shipped name) or "timm" (``name`` a timm model name).
    """
    args = dict(name=name, which=which, batch=batch, img_size=img_size, steps=steps, warmup_steps=warmup_steps,
                grad_checkpointing=grad_checkpointing, channels_last=channels_last, device=device,
                threads=threads or torch.get_num_threads())
    # glibc: tensors above 64 KiB get their own mmap, returned to the OS when freed, so the resident set follows the
    # live tensors instead of heap fragmentation (with default settings repeated runs differ by +-10%)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(json.loads(line[5:])["peak_bytes"])
    raise RuntimeError(f"peak-memory subprocess for {which} {name!r} failed:\n{done.stderr[-2000:]}")


# ------------------------------------------------------------------------------------------------ comparisons
@dataclass
class Row:
    """One measurement: our timing, the other's (timm, or our model before deploy), their speed ratio."""

    what: str  # e.g. "inference b1", "train step b8", "peak train MB b8"
    ours: float  # seconds (median) or bytes
    other: float | None = None
    ours_range: tuple[float, float] | None = None
    other_range: tuple[float, float] | None = None

    @property
    def ratio(self) -> float | None:
        """other / ours: speed ratio for times (>1: we are faster), memory ratio for bytes (>1: we use less)."""
        return None if self.other is None or self.ours == 0 else self.other / self.ours


@dataclass
class Report:
    """Every row for one model, plus how it was measured."""

    name: str
    against: str | None
    rows: list[Row] = field(default_factory=list)
    max_abs_diff: float | None = None
    conditions: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row, data in zip(self.rows, out["rows"]):
            data["ratio"] = row.ratio
        return out

    def table(self) -> str:
        other = self.against or "other"
        lines = [f"| {self.name} | ours | {other} | ratio ({other} / ours) |", "|---|---|---|---|"]
        for row in self.rows:
            if row.what.startswith("peak"):
                ours, theirs = f"{row.ours / 2**20:.1f} MB", "-" if row.other is None else f"{row.other / 2**20:.1f} MB"
            else:
                ours = Timing([row.ours_range[0], row.ours, row.ours_range[1]]).ms() if row.ours_range else f"{1e3 * row.ours:.1f}"
                theirs = "-" if row.other is None else (
                    Timing([row.other_range[0], row.other, row.other_range[1]]).ms() if row.other_range else f"{1e3 * row.other:.1f}")
            ratio = "-" if row.ratio is None else f"{row.ratio:.3f}" if row.what.startswith("peak") else f"{row.ratio:.2f}"
            lines.append(f"| {row.what} | {ours} | {theirs} | {ratio} |")
        if self.max_abs_diff is not None:
            lines.append(f"| max abs logit diff | {self.max_abs_diff:.1e} | | |")
        return "\n".join(lines)


def _row(what: str, ours: Timing, other: Timing | None) -> Row:
    return Row(what, ours.median, other.median if other else None, (ours.min, ours.max),
               (other.min, other.max) if other else None)


def conditions(**extra: Any) -> dict[str, Any]:
    """The machine and load a measurement ran under (reported beside every table)."""
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, load_avg=[round(v, 2) for v in load] if load else None, **extra)


def compare(ours: nn.Module, other: nn.Module | None, *, name: str, against: str | None, batches: tuple[int, ...] = (1, 8),
            train_batch: int | None = 8, img_size: int = 224, repeats: int = 15, warmup: int = 3,
            device: str = "cpu", autocast: torch.dtype | None = None, channels_last: bool = False,
            check: bool = True) -> Report:
    """Time ``ours`` against ``other`` (any nn.Module: timm's, or our deployed copy) interleaved; see the module doc."""
    ours, other = ours.to(device), other.to(device) if other is not None else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        ours = ours.to(memory_format=fmt)
        other = other.to(memory_format=fmt) if other is not None else None
    report = Report(name, against, conditions=conditions(device=device, img_size=img_size, repeats=repeats, warmup=warmup,
                                                         autocast=str(autocast) if autocast else None,
                                                         channels_last=channels_last))
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device).contiguous(memory_format=fmt)
        fns = {"ours": inference_call(ours, x, autocast=autocast)}
        if other is not None:
            fns["other"] = inference_call(other, x, autocast=autocast)
            if check and report.max_abs_diff is None:
                report.max_abs_diff = (fns["ours"]().float() - fns["other"]().float()).abs().max().item()
        t = time_interleaved(fns, repeats=repeats, warmup=warmup, device=device)
        report.rows.append(_row(f"inference b{batch}", t["ours"], t.get("other")))
    if train_batch:
        x = torch.randn(train_batch, 3, img_size, img_size, generator=gen).to(device).contiguous(memory_format=fmt)
        fns = {"ours": train_step_call(ours, x, autocast=autocast)}
        if other is not None:
            fns["other"] = train_step_call(other, x, autocast=autocast)
        t = time_interleaved(fns, repeats=max(repeats // 2, 3), warmup=max(warmup - 1, 1), device=device)
        report.rows.append(_row(f"train step b{train_batch}", t["ours"], t.get("other")))
        ours.eval()
        if other is not None:
            other.eval()
    return report


def compare_with_timm(spec: str, timm_name: str | None = None, *, memory: bool = True, grad_checkpointing: bool = True,
                      img_size: int = 224, train_batch: int = 8, threads: int | None = None, **kwargs: Any) -> Report:
    """Our recipe ``spec`` against timm's ``timm_name`` (default: the recipe's) with the same weights.

    Adds peak training memory rows (subprocess per model), from a cold start and in the steady state (after one
    step), and with ``grad_checkpointing`` our steady-state peak with ``set_grad_checkpointing(True)`` (ratio: our
    plain peak / checkpointed peak = the saving factor).
    """
    timm_name = timm_name or timm_name_of(spec)
    if timm_name is None:
        raise ValueError(f"{spec} records no timm_name; pass the timm model to compare with")
    theirs = build_timm(timm_name, img_size=img_size)
    ours = same_weights(build_ours(spec, img_size=img_size), theirs, timm_name)
    report = compare(ours, theirs, name=spec, against=f"timm {timm_name}", img_size=img_size, train_batch=train_batch,
                     **kwargs)
    if memory and train_batch:
        device = kwargs.get("device", "cpu")
        mem = dict(batch=train_batch, img_size=img_size, device=device, threads=threads)
        peaks = {}
        for warmup_steps, when in ((0, "first steps"), (1, "steady state")):
            peaks[when] = peak_train_memory(spec, warmup_steps=warmup_steps, **mem)
            theirs_bytes = peak_train_memory(timm_name, which="timm", warmup_steps=warmup_steps, **mem)
            report.rows.append(Row(f"peak train memory b{train_batch}, {when}", peaks[when], theirs_bytes))
        if grad_checkpointing:
            ckpt = peak_train_memory(spec, grad_checkpointing=True, warmup_steps=1, **mem)
            report.rows.append(Row(f"peak train memory b{train_batch}, grad_checkpointing (vs ours plain)", ckpt,
                                   peaks["steady state"]))
    return report


def compare_deploy(spec: str, *, img_size: int = 224, **kwargs: Any) -> Report:
    """Our model after ``metablocks.deploy`` against the same model before (speed ratio = plain / deployed)."""
    import copy

    from metablocks.deploy import deploy

    plain = build_ours(spec, img_size=img_size).eval()
    _randomize_norm_stats(plain)
    fused = deploy(copy.deepcopy(plain))
    kwargs.setdefault("train_batch", None)
    return compare(fused, plain, name=f"{spec} deployed", against="not deployed", img_size=img_size, **kwargs)


@torch.no_grad()
def _randomize_norm_stats(model: nn.Module) -> None:
    """Give BatchNorms non-trivial running stats and affines, so a deploy check cannot pass by accident."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
