"""Progress for sweeps and runs: tqdm bars (overall and per run, with ETA) on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RunProgress:
    """One run's steps: a tqdm bar, or one line per epoch with the time left for the run, and inside a long epoch a
    line every ``line_every_s`` seconds."""

    line_every_s: float = 30.0

    def __init__(self, name: str, total_steps: int, done_steps: int, *, bars: bool, stream: TextIO,
                 position: int = 0, enabled: bool = True) -> None:
        self.name, self.total, self.done = name, total_steps, done_steps
        self.stream, self.enabled, self.start, self.start_done = stream, enabled, time.monotonic(), done_steps
        self.last_line = self.start
        self.bar = None
        if enabled and bars:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=done_steps, desc=name, unit="step", position=position,
                            leave=False, file=stream, dynamic_ncols=True)

    def _times(self) -> tuple[float, float]:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        return elapsed, (self.total - self.done) / rate if rate > 0 else 0.0

    def step(self, loss: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif self.enabled and time.monotonic() - self.last_line >= self.line_every_s:
            elapsed, eta = self._times()
            print(f"{self.name}: step {self.done}/{self.total} ({self.done / max(self.total, 1):.0%}) loss {loss:.4f} "
                  f"({_duration(elapsed)}, eta {_duration(eta)})", file=self.stream, flush=True)
            self.last_line = time.monotonic()

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, Any]) -> None:
        if not self.enabled or self.bar is not None:
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", top1=f"{metrics['val_top1']:.1f}")
            return
        elapsed, eta = self._times()
        self.last_line = time.monotonic()
        print(f"{self.name}: epoch {epoch}/{epochs} train_loss {metrics['train_loss']:.4f} val_loss "
              f"{metrics['val_loss']:.4f} val_top1 {metrics['val_top1']:.2f}% ({_duration(elapsed)}, eta {_duration(eta)})",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Progress:
    """The sweep's runs: an overall bar (runs done / total, ETA) above each run's bar, or plain lines."""

    def __init__(self, total_runs: int = 1, done_runs: int = 0, *, stream: TextIO | None = None,
                 bars: bool | None = None, enabled: bool = True, desc: str = "sweep") -> None:
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        self.enabled, self.total, self.done, self.skipped = enabled, total_runs, done_runs, done_runs
        self.start = time.monotonic()
        self.overall = None
        if enabled and self.bars and total_runs > 1:
            from tqdm import tqdm

            self.overall = tqdm(total=total_runs, initial=done_runs, desc=desc, unit="run", position=0,
                                file=self.stream, dynamic_ncols=True)

    def run(self, name: str, total_steps: int, done_steps: int = 0) -> RunProgress:
        return RunProgress(name, total_steps, done_steps, bars=self.bars, stream=self.stream,
                           position=1 if self.overall is not None else 0, enabled=self.enabled)

    def run_finished(self, name: str, summary: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.overall is not None:
            self.overall.update(1)
            self.overall.write(f"{name}: {summary}", file=self.stream)
            return
        elapsed = time.monotonic() - self.start
        finished_here = self.done - self.skipped
        eta = elapsed / finished_here * (self.total - self.done) if finished_here else 0.0
        print(f"[{self.done}/{self.total} runs] {name}: {summary} (elapsed {_duration(elapsed)}, eta {_duration(eta)})",
              file=self.stream, flush=True)

    def note(self, message: str) -> None:
        """A message for the user (shown even without progress output)."""
        if self.overall is not None:
            self.overall.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()
