"""ONNX export runs in onnxruntime with PyTorch's outputs, with a dynamic batch; ``metablocks export``."""
import pytest
import torch

import metablocks
from metablocks.cli import main
from metablocks.interop.onnx import export_onnx, onnx_diff

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from helpers import small_model  # noqa: E402


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_poolformer_both_exporters_dynamic_batch(tmp_path, exporter: str) -> None:
    model, size = small_model("poolformer_s12")
    result = export_onnx(model, tmp_path / "m.onnx", exporter=exporter)
    assert result.exporter == exporter and result.input_shape == (2, 3, size, size)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4  # checked on a batch of 3
    assert onnx_diff(model, tmp_path / "m.onnx", torch.randn(5, 3, size, size)) <= 1e-4


def test_attention_recipe_exports(tmp_path) -> None:
    model, _ = small_model("caformer_s18")
    result = export_onnx(model, tmp_path / "caformer.onnx", exporter="torchscript")
    assert result.max_abs_diff <= 1e-4


def test_export_cli_deployed(tmp_path, capsys) -> None:
    out = tmp_path / "convnext.onnx"
    assert main(["export", "convnext_atto", "--img-size", "64", "--deploy", "--exporter", "torchscript", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "torchscript exporter, input 2x3x64x64, dynamic batch" in printed
    diff = float(printed.split("max abs difference ")[1].split()[0])
    assert diff <= 1e-4
    import onnx

    graph = onnx.load(str(out)).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    assert graph.input[0].name == "images"


def test_mismatch_is_an_error(tmp_path) -> None:
    """The check is real: a model changed after export no longer matches the file."""
    model, size = small_model("poolformer_s12")
    export_onnx(model, tmp_path / "m.onnx", exporter="torchscript")
    with torch.no_grad():
        model.head.fc.bias.add_(1.0)
    assert onnx_diff(model, tmp_path / "m.onnx", torch.randn(1, 3, size, size)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", metablocks.list_recipes())
def test_every_recipe_exports(tmp_path, name: str) -> None:
    model, _ = small_model(name)
    result = export_onnx(model, tmp_path / f"{name}.onnx")
    assert result.max_abs_diff <= 1e-4, (name, result)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_shifted_padded_window_attention_exports(tmp_path, exporter: str) -> None:
    """A 15x15 map pads to 21x21 for 7x7 windows (the tracer once rounded 15 -> 14 with ONNX's truncating Div) and
    the shifted block's attention is 4-D (the dynamo exporter refuses 5-D SDPA)."""
    block = metablocks.MetaFormerBlock(dim=32, resolution=(15, 15),
                                       token_mixer={"type": "window_attention", "num_heads": 2, "shift": True})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 1), block).eval()
    result = export_onnx(model, tmp_path / "swin_block.onnx", img_size=(15, 15), exporter=exporter)
    assert result.exporter == exporter and result.max_abs_diff <= 1e-5


def test_a_model_carrying_its_class_token_across_stages_exports(tmp_path) -> None:
    """PiT hands (map, class token) from stage to stage: both exporters follow the hand-over."""
    model = metablocks.create_model("pit_ti_224", img_size=64).eval()
    for exporter in ("torchscript", "dynamo"):
        result = export_onnx(model, tmp_path / f"pit_{exporter}.onnx", exporter=exporter)
        assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4  # measured 1.5e-6 at 224
