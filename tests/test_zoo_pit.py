"""PiT Ti/XS/S/B and their distilled models (Heo et al., ICCV 2021) as recipes: equal to timm's pit_* (strict load,
logits and feature maps), the class (and distillation) token carried across stages through PiT's pooling layers."""
from __future__ import annotations

import pytest
import torch

import metablocks
from metablocks.components.downsamples.conv_head_pooling import ConvHeadPooling
from zoo_timm import n_params, token_model_pair

timm = pytest.importorskip("timm")

PARAMS = {  # measured; = timm's and naver-ai/pit's pit.py
    "pit_ti_224": 4_847_272, "pit_xs_224": 10_618_888, "pit_s_224": 23_461_912, "pit_b_224": 73_764_840,
    "pit_ti_distilled_224": 5_104_336, "pit_xs_distilled_224": 11_003_984, "pit_s_distilled_224": 24_039_056,
    "pit_b_distilled_224": 74_790_096,
}
FAST = ("pit_ti_224", "pit_ti_distilled_224")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm(name: str) -> None:
    ours, theirs = token_model_pair(name)
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
        maps, ours_maps = theirs.forward_intermediates(x, intermediates_only=True), ours.forward_intermediates(
            x, intermediates_only=True)
    assert expected.abs().max() > 0.5
    assert (got - expected).abs().max().item() <= 1e-5  # measured 0.0
    assert [m.shape for m in ours_maps] == [m.shape for m in maps]
    assert all((a - b).abs().max().item() <= 1e-5 for a, b in zip(ours_maps, maps))  # measured 0.0


def test_the_class_token_crosses_the_stages() -> None:
    """Stage 0 puts the tokens in and hands (map, tokens) on; stages 1 and 2 carry them, their pooling layers take
    the map 27 -> 14 -> 7 and the tokens 64 -> 128 -> 256 wide; the last stage hands the head its stream."""
    model = metablocks.create_model("pit_ti_distilled_224")
    assert [(s.carried, s.hands_on, s.prefix) for s in model.stages] == [
        ((), True, ("cls", "dist")), (("cls", "dist"), True, ("cls", "dist")), (("cls", "dist"), False, ("cls", "dist"))]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("stages.0.blocks")
              and ".blocks." not in k}
    assert shapes == {
        "stem.conv.weight": (64, 3, 16, 16), "stem.conv.bias": (64,),
        "stages.0.prefix_tokens.cls": (1, 1, 64), "stages.0.prefix_tokens.dist": (1, 1, 64),
        "stages.0.pos_embed.weight": (1, 27 * 27, 64),  # the map's tokens only (prefix: false)
        "stages.1.downsample.conv.weight": (128, 1, 3, 3), "stages.1.downsample.conv.bias": (128,),
        "stages.1.downsample.fc.weight": (128, 64), "stages.1.downsample.fc.bias": (128,),
        "stages.2.downsample.conv.weight": (256, 1, 3, 3), "stages.2.downsample.conv.bias": (256,),
        "stages.2.downsample.fc.weight": (256, 128), "stages.2.downsample.fc.bias": (256,),
        "head.norm.weight": (256,), "head.norm.bias": (256,), "head.fc.cls.weight": (1000, 256),
        "head.fc.cls.bias": (1000,), "head.fc.dist.weight": (1000, 256), "head.fc.dist.bias": (1000,)}
    with torch.no_grad():
        stream = model.forward_features(torch.randn(1, 3, 224, 224))
    assert stream.shape == (1, 2 + 7 * 7, 256)


def test_pooling_layer_by_hand() -> None:
    """The map: a stride-2 3x3 depthwise conv (each input channel to two outputs); the tokens: the linear layer."""
    pool = ConvHeadPooling(1, 2, stride=2)
    with torch.no_grad():
        pool.conv.weight.copy_(torch.stack([torch.ones(1, 3, 3), -torch.eye(3)[None]]))
        pool.conv.bias.copy_(torch.tensor([0.0, 1.0]))
        pool.fc.weight.copy_(torch.tensor([[2.0], [3.0]]))
        pool.fc.bias.zero_()
        x = torch.arange(16.0).reshape(1, 1, 4, 4)
        out = pool(x)
        assert out.shape == (1, 2, 2, 2)
        assert out[0, 0].tolist() == [[10.0, 24.0], [51.0, 90.0]]  # 3x3 sums around (0,0),(0,2),(2,0),(2,2), zero-padded
        assert out[0, 1].tolist() == [[1.0 - 5.0, 1.0 - 9.0], [1.0 - 21.0, 1.0 - 30.0]]  # 1 - the diagonal's sum
        assert pool.forward_prefix(torch.tensor([[[1.5]]])).tolist() == [[[3.0, 4.5]]]
    assert ConvHeadPooling(4, 8, prefix=False).fc is None  # in a map model it has no linear layer


def test_scripts_traces_and_features(tmp_path) -> None:
    """TorchScript and torch.fx run the hand-over; features_only and forward_intermediates give the maps; a model
    pruned after stage 1 gives that stage's stream (tokens and map) to forward_features."""
    model = metablocks.create_model("pit_ti_distilled_224").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(torch.jit.script(model)(x), expected)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), expected)
        features = metablocks.create_model("pit_ti_distilled_224", features_only=True, out_indices=(0, 1, 2))
        features.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
        maps = features.eval()(x)
        assert [tuple(m.shape) for m in maps] == [(1, 64, 27, 27), (1, 128, 14, 14), (1, 256, 7, 7)]
        assert all(torch.equal(a, b) for a, b in zip(maps, model.forward_intermediates(x, intermediates_only=True)))
        final, _ = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(final, maps[1])
        model.prune_intermediate_layers([1])
        stream = model.forward_features(x)
        assert stream.shape == (1, 2 + 14 * 14, 128) and model.num_features == 128
        assert torch.equal(model(x), stream)  # no pooling, and the final norm (256 wide) gone, as timm's prune_end


def test_other_input_sizes_and_training() -> None:
    """timm's PiT takes 224 only; ours resizes its position table (bicubic) to the 31x23 map of a 256x192 input.
    Trained, the gradient reaches the class token through both pooling layers' linear layers."""
    model = metablocks.create_model("pit_ti_224")
    out = model(torch.randn(2, 3, 256, 192))
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert model.stages[0].prefix_tokens.cls.grad.abs().sum() > 0
    assert model.stages[2].downsample.fc.weight.grad.abs().sum() > 0
    model.set_grad_checkpointing()
    model.zero_grad()
    x = torch.randn(2, 3, 224, 224)
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        a = model(x)
    model.set_grad_checkpointing(False)
    with torch.no_grad():
        assert torch.equal(model(x), a)


def test_swapping_a_carried_stage_s_mixer() -> None:
    """set_token_mixer rebuilds a stage that carries the class token: it still takes and hands on the tokens."""
    model = metablocks.create_model("pit_ti_224")
    model.set_token_mixer("pooling", stages=[1])
    assert model.stages[1].carried == ("cls",) and model.stages[1].hands_on
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
