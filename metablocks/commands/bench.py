"""``metablocks bench RECIPE [--vs-timm [NAME]] [--deploy]``: interleaved CPU/GPU timing, ratios and peak memory."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="time a recipe (inference, training step, memory), vs timm or deployed",
                                   description="Time a recipe's inference (eval, inference_mode) at each --batch and one "
                                               "training step (forward, cross-entropy, backward, AdamW) at --train-batch, "
                                               "interleaved in one process against timm's model with the same weights "
                                               "(--vs-timm) and/or our deployed model (--deploy): median of --repeats "
                                               "(min-max). Ratio = other time / our time (>1: ours is faster). Peak "
                                               "training memory is measured in a subprocess per model (VmHWM delta), "
                                               "from a cold start and in the steady state after one step.")
    parser.add_argument("recipe", metavar="FILE|NAME", help="a recipe file or a shipped recipe name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="dotted recipe override, e.g. --set stages[2].token_mixer=pooling (repeatable; with "
                             "--vs-timm only if the architecture stays timm's)")
    parser.add_argument("--vs-timm", nargs="?", const="", default=None, metavar="NAME",
                        help="compare with this timm model (default: the recipe's timm_name), same weights")
    parser.add_argument("--deploy", action="store_true", help="also time our deployed model against the plain one")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="inference batch sizes (default: 1 8)")
    parser.add_argument("--train-batch", type=int, default=8, help="training-step batch (0: skip; default 8)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="input side (default: the recipe's img_size; HaloNets are built for 256)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for weights and input")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from metablocks.analysis import bench

    if args.overrides:
        changed = _apply_overrides(args)
        if changed and args.vs_timm is not None:
            print(f"error: --set changes the architecture of {args.recipe_name}, so there is no timm model with the "
                  f"same weights to compare with; drop --vs-timm (or the --set)", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.img_size is None:  # the size the recipe is built for (a fixed-grid or halo model runs at that one)
        from metablocks.recipe import load_recipe

        args.img_size = load_recipe(args.recipe, args.overrides or None).img_size[0]
    common = dict(batches=tuple(args.batch), img_size=args.img_size, repeats=args.repeats, warmup=args.warmup,
                  device=args.device, autocast=torch.bfloat16 if args.bf16 else None, channels_last=args.channels_last)
    reports = []
    if args.vs_timm is not None:
        reports.append(bench.compare_with_timm(args.recipe, args.vs_timm or None, memory=args.memory,
                                               train_batch=args.train_batch, **common))
    if args.deploy:
        reports.append(bench.compare_deploy(args.recipe, **common))
    if not reports:
        model = bench.build_ours(args.recipe, img_size=args.img_size)
        name = f"{args.recipe_name} with --set {' '.join(args.overrides)}" if args.overrides else args.recipe
        reports.append(bench.compare(model, None, name=name, against=None, train_batch=args.train_batch, **common))
        if args.memory and args.train_batch:
            for warmup_steps, when in ((0, "first steps"), (1, "steady state")):
                reports[-1].rows.append(bench.Row(f"peak train memory b{args.train_batch}, {when}", bench.peak_train_memory(
                    args.recipe, batch=args.train_batch, img_size=args.img_size, device=args.device,
                    warmup_steps=warmup_steps)))
    c = reports[0].conditions
    print(f"# {c['machine']}, {c['cpus']} CPUs, {c['threads']} threads, torch {c['torch']}, device {c['device']}, "
          f"load avg {c['load_avg']}, {args.img_size}px, median of {args.repeats} (min-max) ms; "
          f"ratio = other / ours (>1: ours faster or smaller)")
    for report in reports:
        print()
        print(report.table())
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=2))
    return 0


def _apply_overrides(args: argparse.Namespace) -> bool:
    """Write the recipe with ``--set`` applied to a temporary file that every measurement (the subprocesses too) reads;
    True when the architecture changed."""
    from metablocks.recipe import load_recipe

    original = load_recipe(args.recipe)
    recipe = load_recipe(args.recipe, args.overrides)
    args.recipe_name = original.name
    path = Path(tempfile.mkdtemp(prefix="metablocks-bench-")) / f"{recipe.name}.yaml"
    path.write_text(recipe.to_yaml())
    args.recipe = str(path)
    return recipe.model_id != original.model_id
