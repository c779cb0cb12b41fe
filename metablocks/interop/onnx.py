"""ONNX out: ``export_onnx(model, "model.onnx")`` and a check that onnxruntime gives our outputs.

Two exporters: torch's ``dynamo`` exporter (torch.export + onnxscript, the default of recent torch) and the
older ``torchscript`` tracer (faster to run, deprecated upstream). ``"auto"`` tries dynamo and falls back to the
tracer when it fails; the result says which one produced the file. The batch dimension is dynamic.
Needs the dev dependencies ``onnx``, ``onnxruntime`` and ``onnxscript``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

Exporter = Literal["auto", "dynamo", "torchscript"]


@dataclass
class OnnxExport:
    path: Path
    exporter: str  # the exporter that wrote the file
    input_shape: tuple[int, ...]
    max_abs_diff: float | None = None  # onnxruntime vs PyTorch on a fresh batch, when checked
    fallback_reason: str | None = None  # why "auto" fell back to the tracer


def _example(model: nn.Module, batch: int, img_size: tuple[int, int] | None) -> Tensor:
    recipe = getattr(model, "recipe", None)
    size = img_size or (tuple(recipe.img_size) if recipe is not None else (224, 224))
    chans = recipe.in_chans if recipe is not None else 3
    return torch.randn(batch, chans, *size, generator=torch.Generator().manual_seed(0))


def export_onnx(model: nn.Module, path: str | Path, *, img_size: tuple[int, int] | None = None, batch: int = 2,
                exporter: Exporter = "auto", opset: int | None = None, check: bool = True, atol: float = 1e-4) -> OnnxExport:
    """Export ``model`` (in eval mode) to ``path`` with a dynamic batch dimension; with ``check``, run the file in
    onnxruntime on a fresh batch of a different size and raise if it differs from PyTorch by more than ``atol``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = _example(model, batch, img_size)
    used, reason = exporter, None
    if exporter in ("auto", "dynamo"):
        try:
            _export(model, x, path, dynamo=True, opset=opset)
            used = "dynamo"
        except Exception as err:  # noqa: BLE001 - any exporter failure: report it, or fall back
            if exporter == "dynamo":
                raise
            used, reason = "torchscript", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if used == "torchscript":
        _export(model, x, path, dynamo=False, opset=opset)
    result = OnnxExport(path, used, tuple(x.shape), fallback_reason=reason)
    if check:
        fresh = _example(model, batch + 1, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        result.max_abs_diff = onnx_diff(model, path, fresh)
        if result.max_abs_diff > atol:
            raise AssertionError(f"onnxruntime output differs from PyTorch by {result.max_abs_diff:.2e} > {atol:.0e} "
                                 f"({path}, {used} exporter)")
    return result


def _export(model: nn.Module, x: Tensor, path: Path, *, dynamo: bool, opset: int | None) -> None:
    kwargs: dict = dict(input_names=["images"], output_names=["output"], dynamo=dynamo)
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        kwargs["verbose"] = False
    else:
        kwargs["dynamic_axes"] = {"images": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), **kwargs)


def onnx_diff(model: nn.Module, path: str | Path, x: Tensor) -> float:
    """Max |onnxruntime(path)(x) - model(x)| (CPU execution provider)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model.eval()(x)
    return float((torch.from_numpy(out) - ref).abs().max())
