"""Training one model: seeded, resumable from a safetensors checkpoint, data-parallel under ``torchrun``.

    result = train(recipe, data=DataConfig(source="digits"), config=TrainConfig(epochs=5), out_dir="runs/a")

Each epoch's data order, augmentation and drop-path draws are seeded by (seed, epoch, rank), so a run resumed
from its checkpoint at an epoch boundary continues exactly as if it had never stopped.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from metablocks.data import DataConfig, Splits
from metablocks.data.pipeline import DataInfo, Pipeline
from metablocks.data.stream import sample_seed, seeded
from metablocks.train.checkpoint import resume, save_checkpoint
from metablocks.train.config import MeasureConfig, TrainConfig
from metablocks.train.measure import measure_model
from metablocks.train.optim import make_optimizer, make_scheduler, peak_lr
from metablocks.train.progress import RunProgress
from metablocks.train.tracking import Tracker

CHECKPOINT = "checkpoint.safetensors"


class TrainingFailed(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says why and where."""


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA), if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if size == 1:
        return World(0, 1, base)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        base = torch.device("cuda", local)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if base.type == "cuda" else "gloo")
    return World(rank, size, base)


def autocast_args(config: TrainConfig, device: torch.device) -> tuple[dict[str, Any] | None, bool]:
    """(torch.autocast kwargs or None, whether a GradScaler is needed)."""
    amp = config.amp
    if amp == "auto":
        if device.type != "cuda":
            return None, False
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "off":
        return None, False
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return {"device_type": device.type, "dtype": dtype}, dtype == torch.float16 and device.type == "cuda"


def _all_sum(values: list[float], world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def params_in_sync(model: nn.Module, world: World) -> bool:
    """Whether every rank holds the same weights (compares a float64 checksum of all parameters)."""
    if world.size == 1:
        return True
    checksum = torch.stack([p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())]).sum()
    gathered = [torch.zeros_like(checksum) for _ in range(world.size)]
    dist.all_gather(gathered, checksum.reshape(()).clone())
    return all(bool(g == gathered[0]) for g in gathered)


@torch.no_grad()
def evaluate(model: nn.Module, pipeline: Pipeline, world: World, autocast: dict[str, Any] | None,
             channels_last: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, top-1 %) over the whole split, summed across ranks."""
    model.eval()
    loss_sum = correct = count = 0.0
    for x, y in pipeline.val():
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**autocast) if autocast else _no_autocast():
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], world)
    return loss_sum / count, 100.0 * correct / count


class _no_autocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _configure(config: TrainConfig, device: torch.device) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def build(recipe: Any, info: DataInfo, data: DataConfig, overrides: Mapping[str, Any] | Iterable[str] | None,
          config: TrainConfig | None = None) -> nn.Module:
    from metablocks.model import build_model, resolve_name

    recipe = resolve_name(recipe) if isinstance(recipe, str) else recipe  # timm names too
    fields = {"drop_path_rate": config.drop_path} if config is not None and config.drop_path is not None else {}
    return build_model(recipe, overrides=overrides, num_classes=info.num_classes, img_size=data.img_size,
                       in_chans=info.in_chans, **fields)


def _regularization(config: TrainConfig, model: nn.Module, info: DataInfo, batch_size: int,
                    device: torch.device) -> tuple[Any, Any, nn.Module]:
    """(timm Mixup or None, timm ModelEmaV3 or None, the training loss)."""
    mixup = ema = None
    criterion: nn.Module = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if config.mixup is not None:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        m = config.mixup
        if m.mode != "elem" and batch_size % 2:
            raise ValueError(f"Mixup/CutMix in mode {m.mode!r} pairs the images of a batch, so the per-process "
                             f"batch_size must be even, given {batch_size}")
        mixup = Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, cutmix_minmax=m.cutmix_minmax,
                      prob=m.prob, switch_prob=m.switch_prob, mode=m.mode, label_smoothing=config.label_smoothing,
                      num_classes=info.num_classes)
        criterion = SoftTargetCrossEntropy()
    if config.ema is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema.decay, use_warmup=config.ema.warmup, device=device)
    return mixup, ema, criterion


def train(recipe: Any, *, data: DataConfig, config: TrainConfig, out_dir: str | Path | None = None,
          overrides: Mapping[str, Any] | Iterable[str] | None = None, measure: MeasureConfig | None = None,
          progress: RunProgress | None = None, splits: Splits | None = None, name: str = "run",
          make_progress: Any = None, pretrained: str | Path | None = None) -> dict[str, Any]:
    """Train ``recipe`` (file, shipped name, timm name, dict or Recipe; ``overrides`` as for ``build_model``) and
    evaluate it.

    ``pretrained``: start from a local timm or metablocks checkpoint (``metablocks.load_pretrained``: a classifier
    of another size starts fresh, the first conv is adapted to the data's channels): fine-tuning.
    With ``out_dir``, a checkpoint is written there after every epoch and an existing one is resumed from.
    Returns final/best top-1, per-epoch curves, train throughput and (with ``measure``) the model measurements.
    """
    world = init_world(config.device)
    device = world.device
    _configure(config, device)
    pipeline = Pipeline(data, transform=config.transform, batch_size=config.batch_size,
                        eval_batch_size=config.eval_batch_size, seed=config.seed, device=device, rank=world.rank,
                        world=world.size, splits=splits)
    info = pipeline.info
    torch.manual_seed(config.seed)
    model = build(recipe, info, data, overrides, config)
    if pretrained is not None:
        from metablocks.interop.timm import load_pretrained

        load_pretrained(model, pretrained)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mixup, ema, criterion = _regularization(config, model, info, config.batch_size, device)
    ddp = nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    forward = torch.compile(ddp) if config.compile else ddp
    steps = pipeline.steps_per_epoch
    lr = peak_lr(config, pipeline.global_batch)
    optimizer = make_optimizer(model, config, lr)
    scheduler = make_scheduler(optimizer, config, steps, lr)
    autocast, needs_scaler = autocast_args(config, device)
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None

    checkpoint = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    state: dict[str, Any] = {"epoch": 0, "curves": [], "train_time": 0.0, "train_images": 0, "resumed_from": []}
    notes: list[str] = []  # corrupt checkpoints discarded (see checkpoint.resume)
    restored = resume(checkpoint, notes=notes, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      device=device, extra=ema.module if ema is not None else None) if checkpoint is not None else None
    if restored is not None:
        state = restored
        state["resumed_from"] = [*state.get("resumed_from", []), state["epoch"]]
    if progress is None and make_progress is not None and world.main:
        progress = make_progress(name, config.epochs * steps, state["epoch"] * steps)
    tracker = Tracker(out_dir, config.track, name=name, enabled=world.main,
                      config={"train": config.model_dump(mode="json"), "data": data.model_dump(mode="json")})

    for epoch in range(state["epoch"], config.epochs):
        ddp.train()
        torch.manual_seed(config.seed * 1_000_003 + epoch * 1009 + world.rank)  # drop path, dropout
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + world.rank)
        loss_sum, start = 0.0, time.perf_counter()
        for step, (x, y) in enumerate(pipeline.train_epoch(epoch, generator)):
            if mixup is not None:
                with seeded(sample_seed(config.seed, epoch, step * world.size + world.rank)):
                    x, y = mixup(x, y)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(**autocast) if autocast else _no_autocast():
                loss = criterion(forward(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad or math.inf)
            if not (math.isfinite(loss.item()) and math.isfinite(norm.item())) and scaler is None:
                raise TrainingFailed(f"non-finite {'loss' if not math.isfinite(loss.item()) else 'gradient'} "
                                     f"({loss.item()}) at epoch {epoch + 1}, step {step + 1}")
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            global_step = epoch * steps + step + 1
            if ema is not None:
                ema.update(model, step=global_step)
            loss_sum += loss.item()
            if global_step % config.log_every == 0:
                tracker.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, global_step)
            if progress is not None:
                progress.step(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - start
        (train_loss,) = _all_sum([loss_sum / steps], world)
        val_loss, val_top1 = evaluate(model, pipeline, world, autocast, config.channels_last)  # unwrapped model
        in_sync = params_in_sync(model, world)
        if not in_sync:
            raise TrainingFailed(f"data-parallel ranks diverged at epoch {epoch + 1}")
        metrics = {"epoch": epoch + 1, "train_loss": train_loss / world.size, "val_loss": val_loss,
                   "val_top1": val_top1, "lr": scheduler.get_last_lr()[0], "epoch_time": epoch_time}
        if ema is not None:
            metrics["val_loss_ema"], metrics["val_top1_ema"] = evaluate(ema.module, pipeline, world, autocast,
                                                                        config.channels_last)
        state["curves"].append(metrics)
        state["epoch"] = epoch + 1
        state["train_time"] += epoch_time
        state["train_images"] += steps * pipeline.global_batch
        if progress is not None:
            progress.epoch(epoch + 1, config.epochs, metrics)
        if checkpoint is not None and world.main:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            state=state, extra=ema.module.state_dict() if ema is not None else None)
        tracker.log({"epoch/train_loss": metrics["train_loss"], "epoch/val_loss": val_loss, "epoch/val_top1": val_top1,
                     "epoch/val_top1_ema": metrics.get("val_top1_ema"), "epoch/time_s": epoch_time,
                     "epoch/train_images_per_s": steps * pipeline.global_batch / epoch_time}, (epoch + 1) * steps)
        if world.size > 1:
            dist.barrier()
    if progress is not None:
        progress.close()
    tracker.close()

    curves = state["curves"]
    result: dict[str, Any] = {
        "top1": curves[-1]["val_top1"], "best_top1": max(c["val_top1"] for c in curves),
        "val_loss": curves[-1]["val_loss"], "epochs": config.epochs, "curves": curves,
        "train_throughput": state["train_images"] / state["train_time"] if state["train_time"] else None,
        "train_time_s": state["train_time"], "resumed_from": state["resumed_from"], "world_size": world.size,
        "device": str(device), "num_classes": info.num_classes, "train_size": info.train_size,
        "val_size": info.val_size, "recipe_name": model.recipe.name, "model_id": model.recipe.model_id,
    }
    if notes:
        result["checkpoint_notes"] = notes
    if info.streamed:
        result["data_loader"] = f"stream ({data.workers} workers)"
    if ema is not None:
        result["top1_ema"] = curves[-1]["val_top1_ema"]
        result["best_top1_ema"] = max(c["val_top1_ema"] for c in curves)
    if world.size > 1:
        result["ddp_in_sync"] = params_in_sync(model, world)
    if measure is not None and world.main:
        result.update(measure_model(model, img_size=data.img_size, in_chans=info.in_chans,
                                    num_classes=info.num_classes, config=measure, device=device,
                                    autocast=autocast))
    result["_model"] = model
    if ema is not None:
        result["_ema"] = ema.module
    return result
