"""Ablation sweeps: a base recipe, axes over recipe fields, seeds; trained, measured, compared; resumable.

    from metablocks.sweep import Sweep, run_sweep, report
    Sweep.load("examples/mixer_ablation.yaml").plan()      # the runs, validated, before anything trains
    run_sweep("examples/mixer_ablation.yaml", "runs/mixer_ablation", workers=2)
    report("runs/mixer_ablation")                           # tables and plots again from results.jsonl

Runs train in a pool (or on Ray); speed and memory are measured afterwards by the driver, alone, against a
reference model (driver.py). The directory heals from torn results lines, corrupt checkpoints and stale temp files.
"""
from metablocks.sweep.driver import report, run_sweep
from metablocks.sweep.executor import LocalExecutor, RayExecutor, execute_run
from metablocks.sweep.results import ResultStore, aggregate
from metablocks.sweep.spec import Axis, RunSpec, Sweep, SweepError, SweepSpec

__all__ = ["Axis", "LocalExecutor", "RayExecutor", "ResultStore", "RunSpec", "Sweep", "SweepError", "SweepSpec",
           "aggregate", "execute_run", "report", "run_sweep"]
