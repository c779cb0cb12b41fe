"""RepLKNet-31B as a recipe: the official code's structure and parameter count, the paper's MACs, the RepLK mixer
(31x31 + 5x5 re-parameterized), ConvFFN and conv-BN stacks fusing to the same function."""
import pytest
import torch
from torch import nn

import metablocks
from metablocks.components.channel_mixers.conv_ffn import ConvFFN
from metablocks.components.stems.conv_stack import ConvStack
from metablocks.deploy import deploy as reparameterize_model
from metablocks.components.token_mixers.replk import RepLK
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context, get

fvcore = pytest.importorskip("fvcore.nn")

KERNELS, LAYERS, CHANNELS = (31, 29, 27, 13), (2, 2, 18, 2), (128, 256, 512, 1024)
OFFICIAL_PARAMS = 79_864_168  # the official replknet.py's create_RepLKNet31B, counted
# a narrow RepLKNet (same depths and kernels, 1/16 of the widths) for the default run
NARROW = {f"stages[{i}].dim": c // 16 for i, c in enumerate(CHANNELS)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def official_params(kernels: tuple, layers: tuple, channels: tuple, small: int = 5) -> int:
    """The official RepLKNet's parameter count written out layer by layer (every BN: 2 per channel)."""
    c = channels[0]
    total = (27 * c + 2 * c) + (9 * c + 2 * c) + (c * c + 2 * c) + (9 * c + 2 * c)  # stem: conv, dw, 1x1, dw (+BN)
    for i, (k, depth, c) in enumerate(zip(kernels, layers, channels)):
        replk = 2 * c + (c * c + 2 * c) + (k * k * c + 2 * c) + (small * small * c + 2 * c) + (c * c + 2 * c)
        ffn = 2 * c + (c * 4 * c + 2 * 4 * c) + (4 * c * c + 2 * c)
        total += depth * (replk + ffn)
        if i + 1 < len(channels):  # transition: 1x1 conv-BN-ReLU, stride-2 dw 3x3 conv-BN-ReLU
            d = channels[i + 1]
            total += (c * d + 2 * d) + (9 * d + 2 * d)
    return total + 2 * channels[-1] + channels[-1] * 1000 + 1000  # head: BN, linear


from helpers import randomize_bn  # noqa: E402


def test_parameter_count_equals_the_official_code() -> None:
    model = metablocks.create_model("replknet_31b")
    assert n_params(model) == official_params(KERNELS, LAYERS, CHANNELS) == OFFICIAL_PARAMS
    assert [b.token_mixer.large_kernel.kernel_size for s in model.stages for b in s.blocks[:1]] == list(KERNELS)
    assert [s.depth for s in model.recipe.stages] == list(LAYERS)
    assert model.recipe.paper.title.startswith("Scaling Up Your Kernels to 31x31")
    assert (model.recipe.paper.macs_g, model.recipe.paper.top1) == (15.3, 83.5)
    deployed = n_params(reparameterize_model(model.eval()))  # the paper counts the re-parameterized model
    assert round(deployed / 1e6) == model.recipe.paper.params_m == 79 and deployed < OFFICIAL_PARAMS


def test_narrow_variant_counts_by_the_same_formula() -> None:
    model = metablocks.build_model("replknet_31b", overrides=NARROW)
    assert n_params(model) == official_params(KERNELS, LAYERS, tuple(c // 16 for c in CHANNELS))


def test_replk_mixer_fuses_to_three_convs() -> None:
    mixer = randomize_bn(RepLK(8, kernel_size=13, small_kernel=5, act=get("act", "relu")()))
    x = torch.randn(2, 8, 15, 15)
    with torch.no_grad():
        before = mixer(x)
        mixer.reparameterize()
        after = mixer(x)
    assert (before - after).abs().max().item() <= 1e-4
    convs = [m for m in mixer.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (13, 13), (1, 1)] and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mixer.modules())


def test_conv_ffn_and_conv_stack_fold_their_batchnorms() -> None:
    ffn = randomize_bn(ConvFFN(8, ratio=4, act=get("act", "gelu")()))
    stem_config = metablocks.load_recipe("replknet_31b").stem
    stem = randomize_bn(stem_config.build(Context(3, out_dim=16)))
    assert isinstance(stem, ConvStack)
    x, image = torch.randn(2, 8, 6, 6), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = ffn(x), stem(image)
        ffn.reparameterize()
        reparameterize_model(stem)
        after = ffn(x), stem(image)
    assert all((b - a).abs().max().item() <= 1e-4 for b, a in zip(before, after))
    assert before[1].shape == (2, 16, 8, 8)  # stride 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in (*ffn.modules(), *stem.modules()))


def test_replk_constraints_are_reported() -> None:
    config = get("token_mixer", "replk")
    assert config(kernel_size=30).check(Context(8)) == ["kernel_size must be odd and between 3 and 31, got 30"]
    assert config(kernel_size=7, small_kernel=9).check(Context(8)) == [
        "small_kernel must be odd and smaller than kernel_size=7, got 9"]
    with pytest.raises(RecipeError, match="depthwise, so it needs as many channels out as in"):
        metablocks.load_recipe("replknet_31b", {"stem.layers[1].width": 0.5})


def test_narrow_deploy_model_equals_training_model() -> None:
    model = randomize_bn(metablocks.build_model("replknet_31b", overrides=NARROW))
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        before = model(x)
        reparameterize_model(model)
        after = model(x)
    assert (before - after).abs().max().item() <= 1e-4 * max(1.0, before.abs().max().item())
    large = [b.token_mixer.large_kernel for s in model.stages for b in s.blocks]
    assert all(not hasattr(dw, "small") and dw.conv.bias is not None for dw in large)


@pytest.mark.parametrize("resolution", [224, 160])
def test_narrow_forward_backward(resolution: int) -> None:
    model = metablocks.build_model("replknet_31b", overrides=NARROW, num_classes=10, drop_path_rate=0.3)
    out = model(torch.randn(1, 3, resolution, resolution))
    assert out.shape == (1, 10)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_macs_match_the_paper() -> None:
    """15.3G in the paper; the deployed model (one 31x31 conv per block) counted by fvcore at 224 is within 3%."""
    model = reparameterize_model(metablocks.create_model("replknet_31b").eval())
    counter = fvcore.FlopCountAnalysis(model, torch.randn(1, 3, 224, 224))
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    assert abs(counter.total() / 1e9 / 15.3 - 1) <= 0.03


@pytest.mark.slow
def test_full_deploy_model_equals_training_model() -> None:
    model = randomize_bn(metablocks.create_model("replknet_31b"))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        reparameterize_model(model)
        after = model(x)
    assert (before - after).abs().max().item() <= 1e-4 * max(1.0, before.abs().max().item())


@pytest.mark.slow
def test_full_forward_backward() -> None:
    model = metablocks.create_model("replknet_31b")
    out = model(torch.randn(1, 3, 224, 224))
    out.sum().backward()
    assert out.shape == (1, 1000) and model.stem.layers[0].conv.weight.grad is not None
