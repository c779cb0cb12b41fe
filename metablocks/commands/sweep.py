"""``metablocks sweep plan|run|report``: ablation sweeps over recipe fields (see metablocks/sweep)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SPEC_FORMAT = """\
A sweep spec is a YAML file (full reference: docs/sweep-spec.md; an example: examples/mixer_ablation.yaml):

  name: mixer_ablation            # the sweep's name (default: the file's name); runs go to runs/<name>
  base: my_recipe.yaml            # the base recipe: a file (relative to the spec), a shipped name, or a mapping
  overrides:                      # recipe paths set in every run, before the axes
    block.layer_scale: 1.0e-6
  axes:                           # what varies: any recipe path ([i] and [a:b] select stages)
    - path: "stages[1:].token_mixer"
      values: [pooling, {type: attention, head_dim: 16}, identity]
      name: mixer                 # the column in the results (default: the path's last field)
      labels: [pooling, attention, identity]    # optional: one short label per value
    - path: train.lr              # a path under train. or data. varies that setting instead
      values: [1.0e-3, 2.0e-3]
  mode: grid                      # grid: every combination; zip: the i-th values together; random: draw samples
  # samples: 4                    # mode: random only: how many combinations to draw (sample_seed: 0 picks them)
  seeds: [0, 1]                   # every combination runs once per seed (or repeats: 2 for seeds 0, 1)
  data: {source: digits, img_size: 32}           # DataConfig, shared by every run
  train: {epochs: 10, batch_size: 64, lr: 2.0e-3}  # TrainConfig
  measure: {batch_size: 64}                        # MeasureConfig: params, MACs, speed, memory after training
  report: {group_by: mixer}                        # the axis whose values get one marker each in the plots

Every mistake is reported with its file, line and field, all at once; 'metablocks validate SPEC' checks a spec and
every run it expands to. '--set PATH=VALUE' on plan/run changes the spec for that call: paths under train., data.,
measure. and report., and seeds, repeats, mode, samples, sample_seed set the spec's own fields; any other path is a
recipe override of the base (added to overrides:). Runs are identified by a hash of their resolved recipe and
settings, so a changed spec runs only what changed; 'sweep run' again after an interruption resumes.
"""

SPEC_FIELDS = ("train", "data", "measure", "report", "seeds", "repeats", "mode", "samples", "sample_seed")
"""Top-level fields of a sweep spec that ``--set`` changes; any other path is a recipe override of the base."""


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="change the spec for this call: train.epochs=1, seeds=[0], or a recipe path of the base "
                             "(stages[0].dim=48); repeatable")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="plan, run and report ablation sweeps", description=__doc__ + "\n\n" + SPEC_FORMAT,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")

    plan = sub.add_parser("plan", help="show the expanded runs of a sweep spec, before anything trains",
                          description="Expand a sweep spec into its runs (validated) and print them; nothing trains.\n\n"
                                      + SPEC_FORMAT)
    plan.add_argument("spec", help="sweep YAML file")
    _add_set(plan)
    plan.add_argument("--out", default=None, help="sweep directory: also show which runs are finished there")
    plan.add_argument("--macs", action="store_true", help="build each configuration and show params and MACs")
    plan.add_argument("--json", action="store_true", help="print the runs as JSON")
    plan.set_defaults(func=do_plan)

    run = sub.add_parser("run", help="run (or resume) a sweep",
                         description="Train and measure every run of the spec not finished yet in --out (resuming an "
                                     "interrupted one from its checkpoint), then write results.jsonl, results.csv, "
                                     "results.md and plots/.\n\n" + SPEC_FORMAT)
    run.add_argument("spec", help="sweep YAML file")
    _add_set(run)
    run.add_argument("--out", default=None, help="sweep directory (default: runs/<sweep name>)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: this machine's processes; ray: tasks on a Ray cluster")
    run.add_argument("--workers", type=int, default=1, help="local: runs at once (>1: one process per run)")
    run.add_argument("--address", default=None, help="ray: cluster address (auto, host:6379, ray://host:10001); "
                     "default: RAY_ADDRESS or a new local Ray")
    run.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs each run's task reserves")
    run.add_argument("--gpus-per-run", type=float, default=0.0, help="ray: GPUs each run's placement group reserves "
                     "(a fraction shares a GPU; 2 or more: the run trains data-parallel over them)")
    run.add_argument("--data", default=None, help="replace the spec's data source (e.g. imagefolder)")
    run.add_argument("--data-path", default=None, help="replace the spec's data path (e.g. an ImageNet folder with "
                     "train/ and val/)")
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    run.add_argument("--no-progress", action="store_true", help="no progress output (worker processes included)")
    run.set_defaults(func=do_run)

    report = sub.add_parser("report", help="regenerate a sweep's tables and plots from its results.jsonl")
    report.add_argument("dir", help="sweep directory")
    report.set_defaults(func=do_report)


def _default_out(spec: Any) -> Path:
    return Path("runs") / spec.name


def load_sweep(source: str, overrides: list[str] | None = None) -> Any:
    """The sweep in ``source`` with ``--set`` values applied (see SPEC_FORMAT); mistakes raise SweepError."""
    from metablocks.recipe.errors import Problem, RecipeError, validate
    from metablocks.recipe.loader import parse_overrides
    from metablocks.sweep import Sweep, SweepError, SweepSpec
    from metablocks.sweep.spec import _set

    if not Path(source).is_file():
        raise SweepError([Problem(source, None, None, "no such sweep spec file" +
                                  (" (it is a directory)" if Path(source).is_dir() else ""))])
    sweep = Sweep.load(source)
    if not overrides:
        return sweep
    try:
        pairs = parse_overrides(overrides)
    except RecipeError as err:
        raise SweepError([Problem("--set", None, p.path, p.message) for p in err.problems]) from None
    data = sweep.spec.model_dump(mode="json", exclude_unset=True)
    recipe_overrides = dict(data.get("overrides", {}))
    for path, value in pairs:
        head = path.split(".", 1)[0]
        if head in SPEC_FIELDS:
            data = _set(data, path, value)
        else:
            recipe_overrides[path] = value
    data["overrides"] = recipe_overrides
    try:
        spec = validate(SweepSpec, data, source="--set")
    except RecipeError as err:
        raise SweepError(err.problems) from None
    return Sweep(spec, raw=sweep.raw, file=sweep.file)


def do_plan(args: argparse.Namespace) -> int:
    from metablocks.sweep import ResultStore
    from metablocks.sweep.results import SweepDirError

    sweep = load_sweep(args.spec, args.overrides)
    runs = sweep.plan()
    try:
        done = ResultStore(args.out).latest() if args.out else {}
    except SweepDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=1))
        return 0
    sizes: dict[str, str] = {}
    if args.macs:
        sizes = _sizes(sweep, runs)
    columns = [a.column for a in sweep.spec.axes]
    configs = list(dict.fromkeys(r.config_key for r in runs))
    spec = sweep.spec
    print(f"sweep {spec.name}: {len(runs)} runs = {len(configs)} configurations x {len(spec.seed_list)} seed(s) "
          f"({spec.mode}); {spec.train.epochs} epochs each on {spec.data.source} at {spec.data.img_size}px")
    header = ["#", *columns, "seed", "run_id", "status"] + (["params", "MACs"] if sizes else [])
    rows = []
    for i, r in enumerate(runs):
        status = "invalid: " + r.invalid if r.invalid else "to run"
        if r.run_id in done:
            status = done[r.run_id]["status"] + (f" (top-1 {done[r.run_id]['top1']:.2f}%)"
                                                  if done[r.run_id]["status"] == "ok" else "")
        extra = [sizes.get(r.config_key, ("", ""))[0], sizes.get(r.config_key, ("", ""))[1]] if sizes else []
        rows.append([str(i), *(r.labels[c] for c in columns), str(r.seed), r.run_id, status, *extra])
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    invalid = sum(1 for r in runs if r.invalid)
    if invalid:
        print(f"{invalid} run(s) are invalid at this resolution and will be recorded as failed")
    return 0


def _sizes(sweep: Any, runs: list[Any]) -> dict[str, tuple[str, str]]:
    from metablocks.analysis import count_macs, count_params, human
    from metablocks.data import load_splits
    from metablocks.data.stream import list_image_folder, streamable
    from metablocks.model import build_model

    # the classes and channels the models are built with (a streamed folder is listed, not decoded)
    splits = list_image_folder(sweep.spec.data) if streamable(sweep.spec.data) else load_splits(sweep.spec.data)
    out = {}
    for r in runs:
        if r.config_key in out or r.invalid:
            continue
        model = build_model(r.recipe, in_chans=splits.in_chans, num_classes=splits.num_classes)
        size = r.data["img_size"]
        macs = count_macs(model, (splits.in_chans, size, size)).total
        out[r.config_key] = (human(count_params(model)), human(macs))
    return out


def do_run(args: argparse.Namespace) -> int:
    from metablocks.sweep import Sweep, run_sweep
    from metablocks.sweep.results import SweepDirError, SweepLocked

    sweep = load_sweep(args.spec, args.overrides)
    if args.workers < 1:
        print(f"error: --workers must be at least 1, given {args.workers}", file=sys.stderr)
        return 2
    given = {k: v for k, v in (("source", args.data), ("path", args.data_path)) if v is not None}
    if given:  # --data / --data-path: the same spec on other data
        from metablocks.data import DataConfig
        from metablocks.recipe.errors import validate

        data = validate(DataConfig, {**sweep.spec.data.model_dump(), **given}, source="command line")
        spec = sweep.spec.model_copy(update={"data": data})
        sweep = Sweep(spec, raw=sweep.raw, file=sweep.file)
    out = Path(args.out) if args.out else _default_out(sweep.spec)
    try:
        records = run_sweep(sweep, out, executor=args.executor, workers=args.workers, address=args.address,
                            cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                            retry_failed=args.retry_failed,
                            progress=not args.no_progress)
    except (SweepDirError, SweepLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok} of {len(records)} runs ok; results in {out}/results.jsonl, table {out}/results.md, plots {out}/plots/")
    print((out / "results.md").read_text())
    return 0


def do_report(args: argparse.Namespace) -> int:
    from metablocks.sweep import report
    from metablocks.sweep.results import SweepDirError

    try:
        made = report(args.dir)
    except SweepDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in made["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"{made['finished']} of {made['planned']} runs finished")
    print(Path(made["markdown"]).read_text())
    for path in made["plots"]:
        print(f"wrote {path}")
    return 0
