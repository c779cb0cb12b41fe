"""``metablocks train RECIPE --data SOURCE``: train one model (also under ``torchrun`` with DDP)."""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from metablocks.train.config import TrainConfig

SCALARS = (int, float, str, bool)


def _scalar(annotation: Any) -> type | None:
    """The plain type of a field that takes one scalar (``int | None`` -> int), else None."""
    if annotation in SCALARS:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return None


FLAG_NAMES = {"recipe": "--train-recipe"}  # fields whose flag would read as something else (the model recipe)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per scalar field of TrainConfig (``--epochs``, ``--batch-size``, ``--lr``, ...), and the most used
    settings of the nested ones (``--aa``, ``--mixup``, ``--cutmix``, ``--reprob``, ``--ema-decay``, ``--track``)."""
    group = parser.add_argument_group("training (TrainConfig)")
    for name, field in TrainConfig.model_fields.items():
        kind = _scalar(field.annotation)
        if kind is None:
            continue
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if kind is bool:
            group.add_argument(flag, dest=f"train_{name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default {field.default})")
        else:
            group.add_argument(flag, dest=f"train_{name}", type=kind, default=None, metavar=kind.__name__.upper(),
                               help=f"(default {field.default})")


    nested = parser.add_argument_group("augmentation and regularization (timm; also set by --train-recipe)")
    nested.add_argument("--aa", dest="nested_transform.auto_augment", default=None, metavar="POLICY",
                        help="timm per-image transform with this RandAugment/AutoAugment policy, e.g. "
                             "rand-m9-mstd0.5-inc1 (random-resized crop and flips come with it)")
    nested.add_argument("--reprob", dest="nested_transform.re_prob", type=float, default=None, metavar="P",
                        help="random erasing probability (timm transform)")
    nested.add_argument("--mixup", dest="nested_mixup.mixup_alpha", type=float, default=None, metavar="ALPHA",
                        help="Mixup alpha (without a recipe the CutMix alpha is then 0 unless --cutmix is given)")
    nested.add_argument("--cutmix", dest="nested_mixup.cutmix_alpha", type=float, default=None, metavar="ALPHA",
                        help="CutMix alpha (without a recipe the Mixup alpha is then 0 unless --mixup is given)")
    nested.add_argument("--ema-decay", dest="nested_ema.decay", type=float, default=None, metavar="DECAY",
                        help="keep and evaluate an EMA of the weights with this decay")
    nested.add_argument("--track", dest="train_track", nargs="*", default=None, metavar="BACKEND",
                        choices=["tensorboard", "mlflow", "wandb"],
                        help="experiment tracking beside result.json (default: tensorboard; none: --track)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    given: dict[str, Any] = {k[len("train_"):]: v for k, v in vars(args).items()
                             if k.startswith("train_") and v is not None}
    for key, value in vars(args).items():
        if key.startswith("nested_") and value is not None:
            section, field = key[len("nested_"):].split(".")
            given.setdefault(section, {})[field] = value
    if "mixup" in given and given.get("recipe") is None:  # one alpha given alone: only that mix
        given["mixup"] = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, **given["mixup"]}
    if "track" in given:
        given["track"] = tuple(given["track"])
    return TrainConfig(**given)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train one model on a dataset", description=__doc__)
    p.add_argument("recipe", help="recipe file or shipped recipe name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="dotted recipe override, e.g. --set stages[2:].token_mixer=attention (repeatable)")
    p.add_argument("--override", dest="overrides", action="append", help=argparse.SUPPRESS)  # the old name of --set
    data = p.add_argument_group("data (DataConfig)")
    data.add_argument("--data", default="digits", help="digits, synthetic, imagefolder, cifar10, cifar100")
    data.add_argument("--data-path", default=None, help="local directory for imagefolder / cifar10 / cifar100")
    data.add_argument("--img-size", type=int, default=32, help="input size the images are resized to")
    data.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    data.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images")
    data.add_argument("--crop-padding", type=int, default=2, help="random translation in pixels (0: none)")
    data.add_argument("--hflip", action="store_true", help="random horizontal flips")
    data.add_argument("--loader", choices=["auto", "memory", "stream"], default="auto",
                      help="stream: read images from disk every epoch in DataLoader workers (auto: for imagefolder)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    add_train_flags(p)
    p.add_argument("--out", default=None, help="directory for checkpoint.safetensors, model.safetensors and "
                   "result.json; an existing checkpoint there is resumed")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="fine-tune from a local timm or metablocks checkpoint (.safetensors, .pth); a classifier of "
                   "another size starts fresh")
    p.add_argument("--measure", action="store_true", help="also measure params, MACs, speed and memory")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=run)


LOCAL_SOURCES = ("imagefolder", "cifar10", "cifar100")  # data sources read from a directory the user names


def _usage_problem(data: Any, config: TrainConfig) -> str | None:
    """A mistake in the flags found before anything loads, as a sentence (None when there is none)."""
    if data.source in LOCAL_SOURCES and data.path is None:
        return f"--data {data.source} reads a local directory: give it with --data-path DIR"
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"--device {config.device}: CUDA is not available here (torch {torch.__version__}); use --device cpu"
    return None


def run(args: argparse.Namespace) -> int:
    from metablocks.data import AugmentConfig, DataConfig
    from metablocks.train.checkpoint import atomic_write
    from metablocks.train.config import MeasureConfig
    from metablocks.train.loop import TrainingFailed, init_world, train
    from metablocks.train.progress import Progress

    data = DataConfig(source=args.data, path=args.data_path, img_size=args.img_size, limit_train=args.limit_train,
                      limit_val=args.limit_val, augment=AugmentConfig(crop_padding=args.crop_padding, hflip=args.hflip),
                      loader=args.loader, workers=args.workers)
    config = train_config(args)
    problem = _usage_problem(data, config)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    world = init_world(config.device)
    progress = Progress(enabled=not args.no_progress and world.main)
    try:
        result = train(args.recipe, data=data, config=config, out_dir=args.out, overrides=args.overrides or None,
                       measure=MeasureConfig() if args.measure else None, make_progress=progress.run,
                       name=Path(args.recipe).stem, pretrained=args.pretrained)
    except TrainingFailed as err:
        print(f"error: training failed: {err}", file=sys.stderr)
        return 1
    model = result.pop("_model")
    if world.main:
        summary = {k: v for k, v in result.items() if k != "curves"}
        print(f"top-1 {result['top1']:.2f}% (best {result['best_top1']:.2f}%) after {result['epochs']} epochs, "
              f"{result['train_throughput']:.0f} img/s training on {result['world_size']} x {result['device']}")
        if args.out:
            from safetensors.torch import save_file

            out = Path(args.out)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(out / "model.safetensors"))
            atomic_write(out / "result.json", json.dumps({**summary, "curves": result["curves"]}, indent=1,
                                                         default=str).encode())
            print(f"wrote {out / 'model.safetensors'} and {out / 'result.json'}")
    if world.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
