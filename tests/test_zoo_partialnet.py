"""PartialNet (Huang et al., "Partial Channel Network: Compute Fewer, Perform Better", 2025) as recipes, held to the
official code (github.com/haiduo/PartialNet): its PATConv blocks are ``split`` composites of ordinary components
(a 3x3 conv on a quarter of the channels; SRM + BN, or LN + iRPE attention, on the rest), its PAT_sp a ``split``
inside a ``seq`` MLP.

The official code is not available here: tests/data/partialnet_official_keys.json holds its parameter counts and the
key/shape list of its state_dict (t0: PAT_ch + PAT_sf, t1: with PAT_sp), produced once from it. With
``PARTIALNET_REF=/path/to/PartialNet`` (and easydict importable) the logits are compared too.
"""
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks import RecipeError
from metablocks.components.token_mixers.rpe_attention import RpeAttention, euclidean_buckets
from metablocks.components.token_mixers.spatial_gate import SpatialGate
from metablocks.components.token_mixers.srm import SRM
from metablocks.interop.official.partialnet import convert_partialnet, load_partialnet
from zoo_timm import perturb

OFFICIAL = json.loads((Path(__file__).parent / "data" / "partialnet_official_keys.json").read_text())
SIZES = list(OFFICIAL["params"])


def meta_model(name: str) -> metablocks.MetaModel:
    with torch.device("meta"):
        return metablocks.create_model(name)


@pytest.mark.parametrize("size", SIZES)
def test_params_equal_the_official_code(size: str) -> None:
    model = meta_model(f"partialnet_{size}")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL["params"][size]


@pytest.mark.parametrize("size", list(OFFICIAL["state_dict"]))
def test_official_state_dict_maps_onto_ours_key_for_key(size: str) -> None:
    model = meta_model(f"partialnet_{size}")
    official = {k: torch.empty(shape, device="meta") for k, shape in OFFICIAL["state_dict"][size].items()}
    converted = convert_partialnet(official)
    ours = model.state_dict()
    assert len(converted) == len(official)  # no two official keys land on one of ours
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)


def test_stages_hold_pat_ch_then_pat_sf() -> None:
    recipe = metablocks.load_recipe("partialnet_t0")
    for stage in recipe.stages[:3]:  # PAT_ch: conv on a quarter, SRM gate + BN on the rest, one branch
        conv, rest = stage.token_mixer[0].parts
        assert (conv.channels, conv.mixer.type, rest.channels) == (0.25, "conv", "rest")
        assert [p.type for p in rest.mixer.parts] == ["srm", "batchnorm"]
        assert stage.paths() == (("token_mixer", "channel_mixer"),)
    last = recipe.stages[3]  # PAT_sf: LN + attention on the rest; x + pconv(x), then x + mlp(x)
    assert [p.type for p in last.token_mixer[0].parts[1].mixer.parts] == ["layernorm", "rpe_attention"]
    assert last.paths() == (("token_mixer",), ("channel_mixer",))
    block = meta_model("partialnet_s").stages[3].blocks[1]  # drop_path_rate 0.1: only the MLP's branch drops
    assert not hasattr(block, "drop_path1") and block.drop_path2.p > 0
    model = meta_model("partialnet_t0")
    attention = model.stages[3].blocks[0].token_mixer.parts[1].parts[1]
    assert isinstance(attention, RpeAttention) and attention.num_heads == 4  # patnet_t0: true in every cfg
    assert attention.qkv.in_features == 192 and attention.rpe_table.shape == (4, 81)  # 3/4 of 256; 2 x 40 + 1
    t1 = metablocks.load_recipe("partialnet_t1").stages[0].channel_mixer[0]  # PAT_sp ends every MLP
    assert [p.type for p in t1.parts] == ["conv_mlp", "split"]
    assert [p.channels for p in t1.parts[1].parts] == ["rest", 0.5]


def test_euclidean_buckets_by_hand() -> None:
    """iRPE's piecewise index at ratio 20 (alpha 20, beta 40, gamma 160), offset by beta: r <= 20 keeps its own
    bucket, farther ones are log-spaced: 21 -> 20 + log(21/20)/log(8) x 20 = 20.47 -> 20; 25 -> 22.15; 29 -> 23.57."""
    row = euclidean_buckets(1, 30, 20.0, torch.device("cpu"))[0]
    assert row[[0, 1, 20, 21, 25, 29]].tolist() == [40, 41, 60, 60, 62, 64]
    for r in (21, 25, 29):
        assert row[r].item() == 40 + round(20 + math.log(r / 20) / math.log(8) * 20)
    grid = euclidean_buckets(5, 5, 20.0, torch.device("cpu"))  # positions row-major: (0, 0) is 0, (4, 3) is 23
    assert (grid[0, 23].item(), grid[0, 24].item()) == (45, 46)  # |(4, 3)| = 5, |(4, 4)| = 5.66 -> 6
    assert torch.equal(grid, grid.T)


def test_rpe_attention_is_softmax_of_scores_plus_table() -> None:
    torch.manual_seed(0)
    attention = RpeAttention(8, num_heads=2, ratio=2.0).eval()
    with torch.no_grad():
        attention.rpe_table.normal_()
        x = torch.randn(1, 8, 3, 2)  # (B, C, H, W): 6 positions
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = attention.qkv(tokens).reshape(1, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
        bias = attention.rpe_table[:, euclidean_buckets(3, 2, 2.0, torch.device("cpu"))]
        weights = (q @ k.transpose(-1, -2) / 2.0 + bias).softmax(-1)  # head_dim 4: scale 1/2
        out = attention.proj((weights @ v).transpose(1, 2).reshape(1, 6, 8)).transpose(1, 2).reshape(1, 8, 3, 2)
        assert torch.allclose(attention(x), out, atol=1e-6)


def test_rpe_buckets_follow_the_map_size() -> None:
    """Built for 7x7 (the buckets computed once); a 5x3 input computes its own and keeps them for the next call."""
    attention = metablocks.registry.Ref("token_mixer").validate({"type": "rpe_attention", "num_heads": 2}).build(
        metablocks.registry.Context(8, resolution=(7, 7)))
    assert attention.size == (7, 7) and attention.buckets.shape == (49, 49)
    assert "buckets" not in attention.state_dict()  # derived, not a weight
    with torch.no_grad():
        attention(torch.randn(1, 8, 5, 3))
    assert attention.size == (5, 3)
    assert torch.equal(attention.buckets, euclidean_buckets(5, 3, 20.0, torch.device("cpu")))


def test_srm_by_hand() -> None:
    """One channel [[1, 2], [3, 4]]: mean 2.5, unbiased std sqrt(5/3); cfc (0.4, 0.2); BN at init (eval)."""
    srm = SRM(1).eval()
    with torch.no_grad():
        srm.cfc.weight.copy_(torch.tensor([0.4, 0.2]).view(1, 1, 1, 2))
        x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
        z = (0.4 * 2.5 + 0.2 * math.sqrt(5 / 3)) / math.sqrt(1 + 1e-5)
        assert torch.allclose(srm(x), x * (z + 3) / 6, atol=1e-6)  # hardsigmoid(z) = (z + 3) / 6 for |z| < 3


def test_spatial_gate_by_hand() -> None:
    gate = SpatialGate(2)
    with torch.no_grad():
        gate.conv.weight.copy_(torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
        x = torch.tensor([[[1.0, 4.0]], [[0.5, -1.0]]]).unsqueeze(0)  # (1, 2, 1, 2)
        scores = torch.tensor([1.0 - 1.0, 4.0 + 2.0])  # per position: x0 - 2 x1
        assert torch.allclose(gate(x), x * F.hardsigmoid(scores).view(1, 1, 1, 2))


def test_bad_settings_are_reported_before_building() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("partialnet_t0", {"stages[3].token_mixer": {"type": "split", "parts": [
            {"channels": 0.25, "mixer": "conv"},
            {"channels": "rest", "mixer": {"type": "seq", "parts": ["layernorm", {"type": "rpe_attention", "num_heads": 5}]}}]}})
    problems = {p.path: p.message for p in err.value.problems}
    assert problems == {"stages[3].token_mixer.parts[1].mixer.parts[1]":
                        "token_mixer 'rpe_attention': dim=192 is not divisible by num_heads=5"}  # 3/4 of 256
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("partialnet_t0", {"img_size": 16})  # stage 2 sees a 1x1 map: no std over one position
    assert ("stages[2].token_mixer.parts[1].mixer.parts[0]: token_mixer 'srm': the style's standard deviation needs at "
            "least 2 positions; the map is 1x1 (set at block.token_mixer.parts[1].mixer.parts[0])") in str(err.value)


@pytest.mark.skipif(not os.environ.get("PARTIALNET_REF"), reason="PARTIALNET_REF (the official checkout) not set")
@pytest.mark.parametrize("size", ["t0", "t1"])
def test_logits_equal_the_official_code(size: str) -> None:
    sys.path.insert(0, os.environ["PARTIALNET_REF"])
    from models.partialnet import PartialNet

    cfgs = {"t0": dict(embed_dim=32, depths=(1, 2, 8, 2), act_layer="GELU", use_spatial_attn=False),
            "t1": dict(embed_dim=48, depths=(1, 2, 8, 2), act_layer="GELU", use_spatial_attn=True)}
    torch.manual_seed(0)
    official = PartialNet(mlp_ratio=2, n_div=4, feature_dim=1280, layer_scale_init_value=0, norm_layer="BN",
                          use_channel_attn=True, patnet_t0=True, auto_div=False, drop_path_rate=0.0,
                          **cfgs[size]).eval()
    perturb(official)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if "lookup_table" in name:
                p.normal_(0, 0.5)
    ours = load_partialnet(metablocks.create_model(f"partialnet_{size}").eval(), official.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - official(x)).abs().max().item() <= 1e-5
