"""Experiment tracking beside the JSONL store (which stays the source of truth for resume): TensorBoard event files,
and MLflow (a local file store) or Weights & Biases (offline mode) when installed and asked for."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping


class Tracker:
    """Scalars to every backend of ``kinds`` that can be used, under ``out_dir``; does nothing without ``out_dir``
    or off the main rank. A backend whose package is missing is skipped with one warning."""

    def __init__(self, out_dir: str | Path | None, kinds: Iterable[str], *, name: str = "run",
                 config: Mapping[str, Any] | None = None, enabled: bool = True) -> None:
        self.backends: list[Any] = []
        if out_dir is None or not enabled:
            return
        out = Path(out_dir)
        for kind in kinds:
            try:
                self.backends.append(_OPEN[kind](out, name, dict(config or {})))
            except ImportError as err:
                warnings.warn(f"experiment tracking: {kind} is not installed ({err}); skipped (pip install {kind})",
                              stacklevel=2)

    def log(self, metrics: Mapping[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        for backend in self.backends:
            backend.log(values, step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


class _TensorBoard:
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import mlflow

        self.client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
        experiment = self.client.get_experiment_by_name("metablocks")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("metablocks")
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        for key, value in _flat(config).items():
            self.client.log_param(self.run_id, key, value)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key.replace("/", "_"), value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _Wandb:
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(out), name=name, config=config, reinit=True)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


_OPEN = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb}


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
