"""FFNet-1/2/3 (MetaMixer) as recipes: the official code's parameter counts and state_dict (a key/shape manifest taken
once from ysj9909/FFNet ``models/ffnet.py``, tests/data/ffnet_official_keys.json) that our converter maps onto our
model; the README's counts and MACs are those of the re-parameterized model, which equals the training form; the
RepVGG depthwise conv and the merging downsample by hand; the error texts of the new components.

With ``FFNET_OFFICIAL=/path/to/FFNet`` (a checkout of the official repository) the official model is also built here
and our logits are compared with its logits, weight for weight (measured: max abs diff 0.0 for ffnet_1, ffnet_3 and ffnet_1 with use_ses).
"""
import copy
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
from metablocks.components.downsamples.repvgg_merging import RepVGGMerging
from metablocks.components.token_mixers.repvgg_dw import RepVGGDW
from metablocks.deploy import deploy
from metablocks.interop.official.ffnet import convert_ffnet, load_ffnet
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context, get

MANIFEST = json.loads((Path(__file__).parent / "data" / "ffnet_official_keys.json").read_text())
SIZES = {  # recipe: (official parameters, re-parameterized parameters, README (params_m, macs_g, top1) @256)
    "ffnet_1": (13_775_656, 13_660_152, (13.7, 2.9, 81.3)),
    "ffnet_2": (27_208_408, 26_908_440, (26.9, 6.0, 82.9)),
    "ffnet_3": (48_817_896, 48_303_752, (48.3, 10.1, 83.9)),
}


# The official use_ses (False in FFNet-1/2/3): a squeeze-excite step after the token mixer of every even block, a plain
# branch of the block grammar in a template that the stages cycle with the plain block.
SE_RECIPE = {
    "extends": "ffnet_1.yaml", "name": "ffnet_1_se",
    "blocks": {"ff_se": {"slots": {"se": {"type": "squeeze_excite", "ratio": 0.25, "round_to": 8}},
                         "branches": [["token_mixer"], {"path": ["se"], "kind": "plain"}, ["channel_mixer"]]},
               "ff": {}},
    "stages": {i: {"pattern": ["ff_se", "ff"]} for i in range(4)},
}


def on_meta(name, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return metablocks.build_model(SE_RECIPE) if name == "ffnet_1_se" else metablocks.create_model(name, **kwargs)


def perturbed(model: nn.Module) -> nn.Module:
    """Norm statistics and affines off their init, and layer scales (init 1e-6) of the order of 1."""
    perturb(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_scale" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", list(SIZES))
def test_params_equal_the_official_code_and_the_recipe_records_the_readme(name: str) -> None:
    official, _, paper = SIZES[name]
    model = on_meta(name)
    assert n_params(model) == official == MANIFEST["params"][name]
    recipe = model.recipe
    assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
    assert recipe.paper.counts == "deployed" and recipe.paper.resolution == 256 and recipe.img_size == (256, 256)


def test_the_readme_counts_the_reparameterized_model() -> None:
    for official, deployed, (params_m, _, _) in SIZES.values():
        assert round(deployed / 1e6, 1) == params_m and deployed < official
    model = perturbed(metablocks.create_model("ffnet_1"))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        before = model(x)
        deploy(model)
        after = model(x)
    assert n_params(model) == SIZES["ffnet_1"][1]
    assert before.abs().max().item() > 0.5 and (before - after).abs().max().item() <= 1e-4
    # one conv per RepVGG op; the only BatchNorm left is the head's (before the pool)
    assert [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["head.norm"]
    assert all(isinstance(m.conv, nn.Conv2d) and m.conv1 is None for m in model.modules() if isinstance(m, RepVGGDW))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ffnet_2", "ffnet_3"])
def test_deploy_equals_the_training_form(name: str) -> None:
    model = perturbed(metablocks.create_model(name))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        before = model(x)
        deploy(model)
        after = model(x)
    assert n_params(model) == SIZES[name][1] and (before - after).abs().max().item() <= 1e-4


def test_squeeze_excite_variant_is_a_plain_step_in_every_even_block() -> None:
    model = on_meta("ffnet_1_se")
    assert n_params(model) == MANIFEST["params"]["ffnet_1_se"] == 14_204_600
    assert [[hasattr(b, "se") for b in s.blocks] for s in model.stages] == [[True, False]] * 2 + [[True, False] * 4,
                                                                                            [True, False]]
    se = model.stages[0].blocks[0].se
    assert (se.down.out_channels, model.stages[1].blocks[0].se.down.out_channels) == (24, 40)  # timm: 80/4 -> 24


@pytest.mark.parametrize("name", ["ffnet_1", "ffnet_3", "ffnet_1_se"])
def test_converter_maps_the_official_state_dict_onto_ours(name: str) -> None:
    theirs = {k: torch.empty(shape, device="meta") for k, shape in MANIFEST["keys"][name].items()}
    converted = convert_ffnet(theirs)
    ours = on_meta(name).state_dict()
    assert sorted(converted) == sorted(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)  # layer scales: (C, 1, 1) -> (C,)
    assert sum(len(shape) == 3 and k.endswith("layer_scale") for k, shape in MANIFEST["keys"][name].items()) == (
        70 if name == "ffnet_3" else 0)


def test_converted_weights_load_strictly_where_they_belong() -> None:
    """Official-shaped weights (from the manifest, random values) load strictly into ours, each to its module."""
    gen = torch.Generator().manual_seed(0)
    theirs = {k: torch.randn(shape, generator=gen) if shape else torch.tensor(0)
              for k, shape in MANIFEST["keys"]["ffnet_1"].items()}
    model = load_ffnet(metablocks.create_model("ffnet_1").eval(), theirs)
    assert torch.equal(model.stages[1].downsample.dw.conv1.conv.weight, theirs["stages.1.0.proj.0.conv1.c.weight"])
    assert torch.equal(model.stages[2].blocks[0].token_mixer.conv2.conv1.bn.running_var,
                       theirs["stages.2.1.token_mixer.0.main.conv2.conv1.bn.running_var"])
    assert torch.equal(model.head.fc.weight, theirs["head.weight"])
    assert torch.equal(model.head.norm.running_mean, theirs["norm.running_mean"])


def test_repvgg_dw_by_hand() -> None:
    """dim 1, a 3x3 kernel of ones and a 1x1 kernel of 2 on a 3x3 map of ones, BNs at identity (eval):
    the centre sees 9 + 2, a corner 4 + 2, an edge 6 + 2, each divided by sqrt(1 + eps)."""
    mixer = RepVGGDW(1, kernel_size=3, small_kernel=1).eval()
    with torch.no_grad():
        mixer.conv.conv.weight.fill_(1.0)
        mixer.conv1.conv.weight.fill_(2.0)
        out = mixer(torch.ones(1, 1, 3, 3))
        expected = torch.tensor([[6.0, 8.0, 6.0], [8.0, 11.0, 8.0], [6.0, 8.0, 6.0]]) / (1 + 1e-5) ** 0.5
        assert torch.allclose(out[0, 0], expected)
        mixer.reparameterize()
        assert torch.allclose(mixer(torch.ones(1, 1, 3, 3))[0, 0], expected)
    assert mixer.conv.weight[0, 0, 1, 1].item() == pytest.approx(3 / (1 + 1e-5) ** 0.5)


def test_repvgg_dw_and_merging_fuse_to_the_same_function() -> None:
    x = torch.randn(2, 8, 13, 13)
    for module in (RepVGGDW(8, kernel_size=7, small_kernel=3), RepVGGDW(8, out_dim=16, stride=2),
                   RepVGGDW(8, kernel_size=3, small_kernel=None), RepVGGMerging(8, 16)):
        module = perturbed(module)
        with torch.no_grad():
            before = module(x)
            module.reparameterize()
            after = module(x)
        assert before.shape[1:] in {(8, 13, 13), (16, 7, 7)} and (before - after).abs().max().item() <= 1e-5
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    merging = RepVGGMerging(8, 16)
    assert [type(m).__name__ for m in merging.children()] == ["RepVGGDW", "BatchNorm2d", "Conv2d"]
    assert merging.dw.conv.conv.groups == 8 and merging.dw.conv.conv.weight.shape == (16, 1, 7, 7)


def test_squeeze_excite_equals_timms_at_the_ffnet_widths() -> None:
    """The official SqueezeExcite(dim, 0.25) is timm's SEModule (hidden make_divisible(dim / 4, 8, round_limit=0))."""
    import timm.layers

    for dim in (80, 160, 320, 640, 88, 176, 352, 704, 96, 192, 384, 768):
        ours = get("channel_mixer", "squeeze_excite")(ratio=0.25, round_to=8).build(Context(dim))
        theirs = timm.layers.SqueezeExcite(dim, 0.25)
        ours.load_state_dict({k.replace("fc1", "down").replace("fc2", "up"): v for k, v in theirs.state_dict().items()})
        x = torch.randn(2, dim, 3, 3)
        assert torch.equal(ours(x), theirs(x))


def test_other_resolutions_and_backward() -> None:
    model = metablocks.create_model("ffnet_1", num_classes=10, drop_path_rate=0.2)
    out = model(torch.randn(2, 3, 96, 96))  # a 3x3 map in the last stage
    out.square().mean().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in model.parameters())


def test_component_errors_are_reported() -> None:
    repvgg = get("token_mixer", "repvgg_dw")
    assert repvgg(kernel_size=6).check(Context(8)) == ["kernel_size must be odd to keep the map size, got 6"]
    assert repvgg(kernel_size=3, small_kernel=3).check(Context(8)) == [
        "small_kernel must be odd and smaller than kernel_size=3, got 3"]
    assert repvgg().check(Context(8, out_dim=12)) == [
        "a depthwise conv from 8 to 12 channels needs a multiple of 8 channels out (each input channel gets out/in filters)"]
    with pytest.raises(RecipeError, match=r"stages\[2\]\.token_mixer\.conv1: .*small_kernel must be odd and smaller"):
        metablocks.load_recipe("ffnet_1", {"stages[2].token_mixer.conv1.small_kernel": 9})
    with pytest.raises(RecipeError, match=r"conv must work on \(B, C, H, W\) maps; attention is channels-last"):
        metablocks.load_recipe("ffnet_1", {"stages[0].channel_mixer.conv": {"type": "attention", "head_dim": 8}})
    with pytest.raises(RecipeError, match="a depthwise conv from 160 to 200 channels needs a multiple of 160"):
        metablocks.load_recipe("ffnet_1", {"stages[2].dim": 200})


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZES))
def test_macs_match_the_readme(name: str) -> None:
    """The README's GFLOPs @256 are the re-parameterized model's MACs: 2.985 / 6.003 / 10.146 counted (within 3%)."""
    from metablocks.analysis import count_macs

    model = deploy(metablocks.create_model(name).eval())
    macs = count_macs(model, (3, 256, 256)).total / 1e9
    assert abs(macs / SIZES[name][2][1] - 1) <= 0.03


# ------------------------------------------------------------------------------- against the official code, if present
OFFICIAL = os.environ.get("FFNET_OFFICIAL")


def official_module():
    """models/ffnet.py of the official checkout, imported with the two timm builder helpers it needs stubbed (they
    are gone from timm 1.0; they only fill the pretrained cfg)."""
    import importlib.util

    import timm.models._builder as builder

    builder._update_default_kwargs = lambda *args, **kwargs: None
    builder.resolve_pretrained_cfg = lambda name: types.SimpleNamespace(to_dict=dict)
    spec = importlib.util.spec_from_file_location("ffnet_official", Path(OFFICIAL) / "models" / "ffnet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ffnet_official"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not OFFICIAL, reason="set FFNET_OFFICIAL to a checkout of ysj9909/FFNet")
@pytest.mark.parametrize("name", ["ffnet_1", "ffnet_3", "ffnet_1_se"])
def test_logits_equal_the_official_model(name: str) -> None:
    extra = {"use_ses": [True] * 4} if name == "ffnet_1_se" else {}
    theirs = perturbed(getattr(official_module(), name.removesuffix("_se"))(**extra))
    assert {k: list(v.shape) for k, v in theirs.state_dict().items()} == MANIFEST["keys"][name]
    ours = metablocks.build_model(SE_RECIPE) if name == "ffnet_1_se" else metablocks.create_model(name)
    ours = load_ffnet(ours.eval(), copy.deepcopy(theirs.state_dict()))
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max().item() > 0.5 and (got - expected).abs().max().item() <= 1e-5
