"""TorchScript and torch.fx for every shipped recipe (issue 10, point 10): what timm's test battery checks
(forward_torchscript, forward_fx, backward_fx, forward_fx_torchscript), with our own asserts."""
import warnings

import pytest
import torch

import metablocks
from metablocks.blocks import Block
from metablocks.model import Stage

torchvision_fx = pytest.importorskip("torchvision.models.feature_extraction")

FAST = ["convnext_atto", "swin_t", "mixer_s16_224", "resnet50", "deit_tiny_patch16_224"]  # the rest (every other recipe) is marked slow
NOT_TRACEABLE: dict[str, str] = {}  # recipe -> why it cannot be scripted/traced yet (none now)


def _params(names: list[str]) -> list:
    marks = {name: [pytest.mark.xfail(reason=NOT_TRACEABLE[name], strict=True)] if name in NOT_TRACEABLE else []
             for name in names}
    return [pytest.param(n, marks=marks[n] + ([] if n in FAST else [pytest.mark.slow])) for n in names]


def _input(model: metablocks.MetaModel, batch: int = 1) -> torch.Tensor:
    """timm's battery size: the model's own when fixed, else at most 128 (ccnet's 769 -> 128)."""
    channels, height, width = model.pretrained_cfg["input_size"]
    if not model.pretrained_cfg["fixed_input_size"]:
        height, width = min(height, 128), min(width, 128)
    return torch.randn(batch, channels, height, width)


def _fx(model: torch.nn.Module) -> torch.nn.Module:
    _, eval_nodes = torchvision_fx.get_graph_node_names(model)
    return torchvision_fx.create_feature_extractor(model, return_nodes=[eval_nodes[-1]])


@pytest.mark.parametrize("name", _params(metablocks.list_recipes()))
def test_torchscript_forward_equals_eager(name: str) -> None:
    torch.manual_seed(0)
    model = metablocks.create_model(name).eval()
    x = _input(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    with torch.inference_mode():
        expected, got = model(x), scripted(x)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the scripted model has our state_dict names (TorchScript adds the non-persistent buffers, as for any module);
    # the eager model is left as it was (its blocks, fast path)
    buffers = {name for name, _ in model.named_buffers()}
    assert set(model.state_dict()) <= set(scripted.state_dict()) <= set(model.state_dict()) | buffers
    assert all(type(s) is Stage for s in model.stages) and all(type(b) is Block for b in model.stages[0].blocks)


@pytest.mark.parametrize("name", _params(metablocks.list_recipes()))
def test_fx_forward_equals_eager_and_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = metablocks.create_model(name).eval()
    x = _input(model)
    with torch.inference_mode():  # as timm's test: the inference fast path must step aside under tracing
        expected = model(x)
        traced = _fx(model)
        got = next(iter(traced(x).values()))
    assert torch.equal(got, expected)
    train = metablocks.create_model(name, num_classes=42).train()
    traced = _fx(train)
    out = next(iter(traced(_input(train, batch=2)).values()))
    out.mean().backward()
    assert out.shape == (2, 42) or out.shape[1] == 42
    missing = [n for n, p in traced.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("name", _params(["convnext_atto", "caformer_s18", "swin_t"]))
def test_fx_graph_scripts(name: str) -> None:
    model = metablocks.create_model(name).eval()
    x = _input(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_fx(model))
    with torch.inference_mode():
        assert torch.allclose(next(iter(scripted(x).values())), model(x), rtol=1e-5, atol=1e-5)
