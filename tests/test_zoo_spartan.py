"""SpaRTAN as a recipe: the official code's parameter count and state_dict (a key/shape manifest taken once from
henry-pay/SpaRTAN ``src/model/spartan.py`` with ``src/config/model/spartan.yaml``, tests/data/spartan_official_keys.json)
that the official converter maps onto our model; smixer's and cmixer's steps by hand; the error texts of both.

With ``SPARTAN_OFFICIAL=/path/to/SpaRTAN`` (a checkout of the official repository) the official model is also built here
and our logits are compared with its logits, weight for weight (measured: max abs diff 2.4e-6 at 224, 1.8e-6 at 160,
3.1e-6 at 97, on logits of magnitude 3: our complex product, two multiply-adds, rounds apart from torch's complex mul).
"""
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo_timm import n_params, perturb

import metablocks
from metablocks.components.channel_mixers.cmixer import CMixer, argmax_gather, complex_scale
from metablocks.components.token_mixers.smixer import SMixer
from metablocks.interop.official import convert_official, convert_official_state_dict, families
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context, get

MANIFEST = json.loads((Path(__file__).parent / "data" / "spartan_official_keys.json").read_text())
PARAMS = 3_820_296  # the official SpaRTAN(1000, **spartan.yaml), counted by running it


def smixer(dim: int, **fields) -> SMixer:
    return get("token_mixer", "smixer")(**fields).build(Context(dim)).eval()


def cmixer(dim: int, **fields) -> CMixer:
    return get("channel_mixer", "cmixer")(**fields).build(Context(dim)).eval()


def test_params_equal_the_official_code() -> None:
    model = metablocks.create_model("spartan_t")
    assert n_params(model) == PARAMS == MANIFEST["params"]["spartan_t"]
    paper = model.recipe.paper
    assert (paper.params_m, paper.macs_g, paper.top1) == (3.8, 1.0, 77.7)
    assert [(s.depth, s.dim) for s in model.recipe.stages] == [(3, 32), (3, 64), (12, 128), (2, 256)]


def test_the_midpoint_switches_both_mixers_convs() -> None:
    """Stages 1-2: full 3x3 convs in smixer, depthwise in cmixer; stages 3-4: depthwise in smixer (groups = C/2),
    C groups of r channels in cmixer (the official ``groups=1 if layer < mid_point else ...``)."""
    model = metablocks.create_model("spartan_t")
    convs = [(b.token_mixer.h_conv.conv.groups, b.token_mixer.l_conv[0].conv.groups, b.channel_mixer.conv.conv.groups,
              b.channel_mixer.theta.out_channels) for b in (s.blocks[0] for s in model.stages)]
    assert convs == [(1, 1, 128, 128), (1, 1, 256, 256), (64, 64, 128, 256), (128, 128, 256, 512)]


def test_drop_path_schedule_is_the_officials() -> None:
    """The official rate of block i (of 20) is 0.1 * i / 20: linspace(0, 0.095, 20)."""
    model = metablocks.create_model("spartan_t")
    rates = [b.drop_path1.p if hasattr(b, "drop_path1") else 0.0 for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.1 * i / 20 for i in range(20)], abs=1e-7)


def test_converter_places_every_official_key() -> None:
    """The manifest (zero tensors of the official shapes) loads strictly: every key placed, none of ours missing."""
    theirs = {k: torch.zeros(shape) for k, shape in MANIFEST["keys"]["spartan_t"].items()}
    assert "spartan" in families()
    model = convert_official(theirs, "spartan_t")
    assert model.official_dropped == [] and len(model.state_dict()) == len(theirs) == 1012


def test_converted_weights_land_where_they_belong() -> None:
    """Random official-shaped weights: the flat ``layers.i`` split into stages (a downsample after each stage is the next
    stage's), (1, C, 1, 1) scales flattened, the complex weight (1, 1, 1, C/2, 2) -> (C/2, 2) in order."""
    gen = torch.Generator().manual_seed(0)
    theirs = {k: torch.randn(shape, generator=gen) if shape else torch.tensor(0)
              for k, shape in MANIFEST["keys"]["spartan_t"].items()}
    model = convert_official(dict(theirs), "spartan_t")
    assert torch.equal(model.stages[1].downsample.layers[0].conv.weight, theirs["layers.3.conv.weight"])
    assert torch.equal(model.stages[3].downsample.layers[0].norm.running_var, theirs["layers.20.norm.running_var"])
    block = model.stages[2].blocks[11]  # layers.19: 3 + 1 + 3 + 1 + 11
    assert torch.equal(block.layer_scale2.scale, theirs["layers.19.scale_2"].flatten())
    assert torch.equal(block.token_mixer.gamma, theirs["layers.19.smixer.gamma"].flatten())
    assert torch.equal(block.token_mixer.l_se.up.bias, theirs["layers.19.smixer.l_attn.expand.bias"])
    assert torch.equal(block.channel_mixer.se.down.weight, theirs["layers.19.cmixer.attn.squeeze.weight"])
    assert torch.equal(block.channel_mixer.complex_weight[5], theirs["layers.19.cmixer.complex"][0, 0, 0, 5])
    assert torch.equal(block.norm1.weight, theirs["layers.19.norm_1.weight"])
    assert torch.equal(model.stem.layers[1].norm.bias, theirs["conv.1.norm.bias"])
    assert torch.equal(model.head.fc.weight, theirs["linear.weight"])


def test_a_key_without_a_place_is_reported() -> None:
    theirs = {k: torch.zeros(shape) for k, shape in MANIFEST["keys"]["spartan_t"].items()}
    theirs["layers.23.scale_1"] = torch.zeros(1, 256, 1, 1)  # one block more than spartan_t has
    model = metablocks.create_model("spartan_t")
    conversion = convert_official_state_dict(theirs, model, "spartan")
    assert "layers.23.layer_scale1.scale" in conversion.state_dict
    with pytest.raises(ValueError, match=r"could not place 1 key\(s\) \(after conversion\): layers\.23\.layer_scale1"):
        convert_official(theirs, model)


# ------------------------------------------------------------------------------------------------------ smixer by hand
def test_smixer_reinforces_what_differs_from_the_mean() -> None:
    """proj_in keeping channels 0-3 of 8, gamma 0.5: u = x + 0.5 (x - mean x); on [[1, 2], [3, 6]] (mean 3) that is
    [[0, 1.5], [3, 7.5]]. The local branch sees u; the output's 1x1 reads [local ; dilated]."""
    mixer = smixer(8)
    seen = {}
    mixer.h_conv.register_forward_hook(lambda m, args, out: seen.update(u=args[0]))
    mixer.h_se.register_forward_hook(lambda m, args, out: seen.update(h=out))
    mixer.l_se.register_forward_hook(lambda m, args, out: seen.update(l=out))
    mixer.proj_out.register_forward_hook(lambda m, args, out: seen.update(cat=args[0]))
    with torch.no_grad():
        mixer.proj_in.weight.copy_(torch.eye(8)[:4, :, None, None])
        mixer.proj_in.bias.zero_()
        mixer.gamma.fill_(0.5)
        x = torch.zeros(1, 8, 2, 2)
        x[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        out = mixer(x)
    assert torch.equal(seen["u"][0, 0], torch.tensor([[0.0, 1.5], [3.0, 7.5]]))
    assert torch.equal(seen["u"][0, 1:], torch.zeros(3, 2, 2))
    assert torch.equal(seen["cat"], torch.cat([seen["h"], seen["l"]], dim=1))
    assert out.shape == (1, 8, 2, 2)


def test_smixer_second_branch_is_dilated_and_the_first_of_its_convs_bare() -> None:
    """A delta through the first dilated conv (depthwise, weights 1) lights up exactly the 3x3 grid of step 2 around it."""
    mixer = smixer(8, group_width=1)
    first = mixer.l_conv[0]
    assert isinstance(first.norm, nn.Identity) and isinstance(first.act, nn.Identity)
    assert isinstance(mixer.l_conv[1].norm, nn.BatchNorm2d) and mixer.l_conv[1].conv.dilation == (2, 2)
    assert mixer.h_conv.conv.dilation == (1, 1) and mixer.h_conv.conv.groups == 4
    with torch.no_grad():
        first.conv.weight.fill_(1.0)
        delta = torch.zeros(1, 4, 7, 7)
        delta[0, :, 3, 3] = 1.0
        lit = first(delta)[0, 0].nonzero().tolist()
    assert lit == [[r, c] for r in (1, 3, 5) for c in (1, 3, 5)]


# ------------------------------------------------------------------------------------------------------ cmixer by hand
def test_complex_scale_by_hand_and_against_view_as_complex() -> None:
    """(3 + 4i)(1 + 2i) = -5 + 10i; channels (2k, 2k+1) are one number; equal to torch's complex product."""
    feat = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    assert complex_scale(feat, torch.tensor([[3.0, 4.0]])).flatten().tolist() == [-5.0, 10.0]
    gen = torch.Generator().manual_seed(0)
    feat, weight = torch.randn(2, 12, 3, 5, generator=gen), torch.randn(6, 2, generator=gen)
    as_complex = torch.view_as_complex(feat.permute(0, 2, 3, 1).reshape(2, 3, 5, 6, 2).contiguous())
    expected = torch.view_as_real(as_complex * torch.view_as_complex(weight)).reshape(2, 3, 5, 12).permute(0, 3, 1, 2)
    torch.testing.assert_close(complex_scale(feat, weight), expected, rtol=0, atol=1e-6)


def test_argmax_gather_by_hand_and_ties_take_the_first_channel() -> None:
    """At each position the maps' value at the input's largest channel; a tie picks the lowest index."""
    x = torch.tensor([[1.0, 5.0], [4.0, 5.0], [2.0, 0.0]]).view(1, 3, 1, 2)  # position 0: channel 1; position 1: tie 0/1
    maps = torch.arange(12.0).view(1, 6, 1, 2)  # channel c holds (2c, 2c + 1)
    (picked,) = argmax_gather(x, [maps])
    assert picked.flatten().tolist() == [2.0, 1.0]


def test_cmixer_equals_the_papers_equation() -> None:
    """f = w t + w[i] t[i] with i = argmax_c x, times the complex weight, then conv-BN-GELU, SE and the 1x1 back."""
    torch.manual_seed(0)
    mixer = cmixer(4, ratio=2, group_width=2)
    perturb(mixer)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        t, w = torch.nn.functional.gelu(mixer.theta(x)), mixer.proj(x)
        i = x.argmax(1, keepdim=True)
        f = w * t + w.gather(1, i) * t.gather(1, i)
        re, im = f[:, 0::2], f[:, 1::2]
        a, b = mixer.complex_weight[:, 0, None, None], mixer.complex_weight[:, 1, None, None]
        f = torch.stack([a * re - b * im, a * im + b * re], dim=2).flatten(1, 2)
        expected = mixer.proj_out(mixer.se(mixer.conv(f)))
        torch.testing.assert_close(mixer(x), expected, rtol=0, atol=1e-6)
    assert mixer.conv.conv.groups == 4 and mixer.se.down.out_channels == 1  # C groups of r; SE hidden = C / 4


def test_cmixer_gradient_passes_the_gathered_values_not_the_choice() -> None:
    """Deterministic; x's gradient comes only through the 1x1 convs (the argmax index is constant); the gathered term
    does reach theta: its gradient changes when the gathered product is left out."""
    torch.manual_seed(0)
    mixer = cmixer(8, ratio=2).train()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = mixer(x)
    assert torch.equal(out, mixer(x))
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with_gather = mixer.theta.weight.grad.clone()
    mixer.zero_grad()
    import metablocks.components.channel_mixers.cmixer as module
    real = module.argmax_gather
    try:
        module.argmax_gather = lambda x, maps: [torch.zeros_like(m[:, :1]) for m in maps]
        mixer(x).square().mean().backward()
    finally:
        module.argmax_gather = real
    assert not torch.allclose(with_gather, mixer.theta.weight.grad)


# ------------------------------------------------------------------------------------------------------ the whole model
def test_small_forward_and_backward() -> None:
    model = metablocks.create_model("spartan_t", num_classes=10)
    out = model(torch.randn(2, 3, 64, 64))  # a 2x2 map in the last stage
    out.square().mean().backward()
    assert out.shape == (2, 10) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 97, 97)).shape == (1, 10)  # odd sizes: the 2x2 downsamples floor


def test_component_errors_are_reported() -> None:
    assert get("token_mixer", "smixer")().check(Context(33)) == ["smixer halves the channels, so dim must be even, got 33"]
    assert get("token_mixer", "smixer")(kernel_size=4, se_ratio=0.01).check(Context(32)) == [
        "kernel_size must be odd to keep the map size, got 4",
        "se_ratio=0.01 leaves no squeeze-excite channels at dim / 2 = 16"]
    assert get("channel_mixer", "cmixer")(ratio=1).check(Context(33)) == [
        "cmixer pairs its ratio x dim = 33 channels into complex numbers, so that must be even (ratio=1, dim=33)"]
    with pytest.raises(RecipeError, match=r"stages\[2\]\.channel_mixer: channel_mixer 'cmixer': group_width=3 does not "
                                          r"divide the 256 channels of the cmixer's conv \(ratio x dim\)"):
        metablocks.load_recipe("spartan_t", {"stages[2].channel_mixer.group_width": 3})
    with pytest.raises(RecipeError, match=r"stages\[3\]\.token_mixer: token_mixer 'smixer': group_width=3 does not "
                                          r"divide the 128 channels of the smixer's convs \(dim / 2\)"):
        metablocks.load_recipe("spartan_t", {"stages[3].token_mixer.group_width": 3})
    with pytest.raises(RecipeError, match=r"stages\[0\]\.token_mixer: .*dim must be even, got 33"):
        metablocks.load_recipe("spartan_t", {"stages[0].dim": 33})


@pytest.mark.slow
def test_macs() -> None:
    """815.0M MACs at 224 (the official main.py's fvcore count: 818.3M FLOPs, one per multiply-add); the abstract says
    "approximately 1.0 GFLOPs"."""
    from metablocks.analysis import count_macs

    macs = count_macs(metablocks.create_model("spartan_t").eval(), (3, 224, 224)).total
    assert abs(macs / 815_006_464 - 1) <= 0.001


# ------------------------------------------------------------------------------- against the official code, if present
OFFICIAL = os.environ.get("SPARTAN_OFFICIAL")


def official_model() -> nn.Module:
    """src/model/spartan.py of the official checkout (``omegaconf`` stubbed: it is only a type hint there)."""
    import importlib.util

    sys.modules.setdefault("omegaconf", types.SimpleNamespace(DictConfig=dict))
    spec = importlib.util.spec_from_file_location("spartan_official", Path(OFFICIAL) / "src" / "model" / "spartan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SpaRTAN(1000, num_layer=4, layer_depths=[3, 3, 12, 2], expand_ratios=[4, 4, 2, 2],
                          dims=[64, 128, 256], dropout=0.1, init_dim=32)


@pytest.mark.skipif(not OFFICIAL, reason="set SPARTAN_OFFICIAL to a checkout of henry-pay/SpaRTAN")
def test_logits_equal_the_official_model() -> None:
    theirs = official_model()
    perturb(theirs)
    with torch.no_grad():  # the layer scales and gamma (init 1e-5) of the order of 1
        for name, param in theirs.named_parameters():
            if name.endswith(("scale_1", "scale_2", "gamma")):
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    theirs.eval()
    assert {k: list(v.shape) for k, v in theirs.state_dict().items()} == MANIFEST["keys"]["spartan_t"]
    assert n_params(theirs) == PARAMS
    ours = convert_official(theirs.state_dict(), "spartan_t")
    for size in (224, 97):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        assert expected.abs().max().item() > 0.5 and (got - expected).abs().max().item() <= 1e-5
