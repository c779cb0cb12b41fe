"""LSNet T/S/B (and their distilled-head variants) as recipes: the official code's parameter counts and state_dict (a
key/shape manifest taken once from THU-MIG/lsnet ``model/lsnet.py``, tests/data/lsnet_official_keys.json) that our
converter maps onto our model; the block grammar's plain squeeze-excite step, even/odd templates and a stage of depth
0; SKA (small-kernel aggregation) in pure PyTorch against a direct loop written from the Triton kernel's indexing; the
attention biases by hand; the fixed resolution of the last stage; the error texts of the new components.

The official SKA is a Triton kernel (GPU only). It was NOT compared here: on CPU the official model was built with
model/ska.py replaced by a direct pure-PyTorch SKA, and its logits equal ours (which use ``lsconv.ska``, unfold) within
2.4e-7 for T, S, B and T-distill. With ``LSNET_OFFICIAL=/path/to/lsnet`` (a checkout) that comparison runs here.
"""
import copy
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_timm import n_params, perturb

import metablocks
from metablocks.components.token_mixers.levit_attention import bias_index
from metablocks.components.token_mixers.lsconv import ska
from metablocks.deploy import deploy
from metablocks.interop.official.lsnet import convert_lsnet, load_lsnet
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context, get

MANIFEST = json.loads((Path(__file__).parent / "data" / "lsnet_official_keys.json").read_text())
SIZES = {  # recipe: (official parameters, README (params_m, macs_g, top1), widths, depths)
    "lsnet_t": (11_409_832, (11.4, 0.3, 74.9), [64, 128, 256, 384], [0, 2, 8, 10]),
    "lsnet_s": (16_146_304, (16.1, 0.5, 77.8), [96, 192, 320, 448], [1, 2, 8, 10]),
    "lsnet_b": (23_313_608, (23.2, 1.3, 80.3), [128, 256, 384, 512], [4, 6, 8, 10]),
}
DISTILLED = {"lsnet_t_distill": (11_795_600, 76.1), "lsnet_s_distill": (16_596_200, 79.0),
             "lsnet_b_distill": (23_827_632, 81.6)}


def on_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return metablocks.create_model(name)


def perturbed(model: nn.Module) -> nn.Module:
    perturb(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "attention_biases" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    return model.eval()


@pytest.fixture(scope="module")
def lsnet_t() -> nn.Module:
    return metablocks.create_model("lsnet_t").eval()


@pytest.mark.parametrize("name", list(SIZES))
def test_params_equal_the_official_code_and_the_recipe_records_the_readme(name: str) -> None:
    official, paper, widths, depths = SIZES[name]
    model = on_meta(name)
    assert n_params(model) == official == MANIFEST["params"][name]
    recipe = model.recipe
    assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper and recipe.paper.counts == "deployed"
    assert [s.dim for s in recipe.stages] == widths and [s.depth for s in recipe.stages] == depths
    distilled = on_meta(f"{name}_distill")
    assert n_params(distilled) == DISTILLED[f"{name}_distill"][0] == MANIFEST["params"][f"{name}_distill"]
    assert distilled.recipe.paper.top1 == DISTILLED[f"{name}_distill"][1]


def test_blocks_alternate_with_a_plain_squeeze_excite_step(lsnet_t) -> None:
    kinds = [[(type(b.token_mixer).__name__, hasattr(b, "se")) for b in s.blocks] for s in lsnet_t.stages]
    assert kinds[0] == [] and kinds[1] == [("RepVGGDW", True), ("LSConv", False)]
    assert kinds[2] == [("RepVGGDW", True), ("LSConv", False)] * 4
    assert kinds[3] == [("RepVGGDW", True), ("LeViTAttention", False)] * 5
    assert len(lsnet_t.stages[0].blocks) == 0 and isinstance(lsnet_t.stages[0].downsample, nn.Identity)
    assert lsnet_t.stages[1].downsample.dw.conv.weight.shape == (64, 1, 3, 3)  # from the stem's 64 channels
    assert lsnet_t.stages[3].blocks[1].token_mixer.resolution == (4, 4)  # 224 / 8 -> 28 -> 14 -> 7 -> 4
    # the even block: x + repvgg_dw(x); se(.) (no shortcut); x + ffn(x)
    block = perturbed(copy.deepcopy(lsnet_t.stages[1].blocks[0]))
    x = torch.randn(1, 128, 6, 6)
    with torch.no_grad():
        y = x + block.token_mixer(x)
        y = block.se(y)
        y = y + block.channel_mixer(y)
        assert torch.allclose(block(x), y, atol=1e-5)


@pytest.mark.parametrize("name", ["lsnet_t", "lsnet_s", "lsnet_t_distill"])
def test_converter_maps_the_official_state_dict_onto_ours(name: str) -> None:
    theirs = {k: torch.empty(shape, device="meta") for k, shape in MANIFEST["keys"][name].items()}
    converted = convert_lsnet(theirs)
    ours = on_meta(name).state_dict()
    assert sorted(converted) == sorted(ours)  # attention_bias_idxs: rebuilt here (a non-persistent buffer)
    assert all(converted[k].shape == ours[k].shape for k in ours)
    assert sum(k.endswith("attention_bias_idxs") for k in theirs) == 5


def test_converted_weights_load_where_they_belong() -> None:
    gen = torch.Generator().manual_seed(0)
    theirs = {k: torch.randn(shape, generator=gen) if shape else torch.tensor(0)
              for k, shape in MANIFEST["keys"]["lsnet_t_distill"].items()}
    theirs = {k: v.long() if k.endswith("attention_bias_idxs") else v for k, v in theirs.items()}
    model = load_lsnet(metablocks.create_model("lsnet_t_distill"), theirs)
    assert torch.equal(model.stages[3].downsample.pw.conv.weight, theirs["blocks4.1.c.weight"])
    assert torch.equal(model.stages[3].blocks[1].token_mixer.proj.bn.weight, theirs["blocks4.3.mixer.m.proj.1.bn.weight"])
    assert torch.equal(model.stages[2].blocks[1].token_mixer.lkp.norm.bias, theirs["blocks3.3.mixer.lkp.norm.bias"])
    assert torch.equal(model.head.fc.dist.linear.weight, theirs["head_dist.l.weight"])


def test_deploy_equals_the_training_form_and_counts_as_the_readme() -> None:
    """The README's #params are the official fused model's (utils.replace_batchnorm); ours deployed keeps the head's
    BatchNorm (2 x 384 parameters) that the official folds into its linear layer."""
    for name, (official, (params_m, _, _), widths, _) in SIZES.items():
        fused = MANIFEST["fused_params"][name]
        assert round(fused / 1e6, 1) == params_m and fused < official
    model = perturbed(metablocks.create_model("lsnet_t", img_size=112))  # a 2x2 map in the attention stage
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        before = model(x)
        deploy(model)
        after = model(x)
    assert before.abs().max().item() > 0.3 and (before - after).abs().max().item() <= 1e-4
    biases_at_112 = 5 * 4 * (16 - 4)  # 5 attention blocks x 4 heads: a 2 x 2 grid has 4 offsets, 224's 4 x 4 has 16
    assert n_params(model) + biases_at_112 == MANIFEST["fused_params"]["lsnet_t"] + 2 * 384 == 11_371_256


def ska_loop(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The Triton kernel ska_fwd, one output element at a time: o[n, c, h, w] = sum over (kh, kw) of
    x[n, c, h - pad + kh, w - pad + kw] * w[n, c % wc, kh * ks + kw, h, w], taps outside the map skipped."""
    n, c, height, width = x.shape
    wc, ks = weight.shape[1], round(weight.shape[2] ** 0.5)
    pad = (ks - 1) // 2
    out = torch.zeros_like(x)
    for ni in range(n):
        for ci in range(c):
            for hi in range(height):
                for wi in range(width):
                    total = 0.0
                    for kh in range(ks):
                        for kw in range(ks):
                            hin, win = hi - pad + kh, wi - pad + kw
                            if 0 <= hin < height and 0 <= win < width:
                                total += float(x[ni, ci, hin, win]) * float(weight[ni, ci % wc, kh * ks + kw, hi, wi])
                    out[ni, ci, hi, wi] = total
    return out


@pytest.mark.parametrize("shape", [(2, 8, 4, 5, 2, 3), (1, 6, 3, 3, 3, 3), (1, 4, 5, 4, 4, 5)])
def test_ska_equals_a_direct_loop(shape: tuple) -> None:
    n, c, h, w, groups, k = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(n, groups, k * k, h, w, generator=gen, dtype=torch.float64)
    assert torch.allclose(ska(x, weight, k), ska_loop(x, weight), atol=1e-12)


def test_ska_by_hand() -> None:
    """One tap per pixel: weight 1 on the right-hand neighbour shifts the map left (zeros past the edge); channels c
    and c + G share a kernel: with G = 2, channel 2 uses group 0's kernel, channel 3 group 1's (here 2 x the centre)."""
    x = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(1, 4, 2, 3)
    weight = torch.zeros(1, 2, 9, 2, 3)
    weight[:, 0, 5] = 1.0  # (kh, kw) = (1, 2): x[h, w + 1]
    weight[:, 1, 4] = 2.0  # the centre
    out = ska(x, weight, 3)
    right = F.pad(x[:, :, :, 1:], (0, 1))
    assert torch.equal(out[:, 0], right[:, 0]) and torch.equal(out[:, 2], right[:, 2])
    assert torch.equal(out[:, 1], 2 * x[:, 1]) and torch.equal(out[:, 3], 2 * x[:, 3])


def test_attention_bias_index_and_formula_by_hand() -> None:
    """Offsets (|dy|, |dx|) numbered |dy| * W + |dx|: on a 2 x 3 grid, point (0, 0) against (1, 2) is offset 5."""
    index = bias_index((2, 3))
    assert index.shape == (6, 6) and index[0].tolist() == [0, 1, 2, 3, 4, 5] and index[5].tolist() == [5, 4, 3, 2, 1, 0]
    assert index[1].tolist() == [1, 0, 1, 4, 3, 4]
    attention = perturbed(get("token_mixer", "levit_attention")(key_dim=4, num_heads=2).build(
        Context(16, resolution=(2, 3))))
    x = torch.randn(2, 16, 2, 3)
    with torch.no_grad():
        q, k, v = attention.qkv(x).split([8, 8, 16], dim=1)
        q = attention.dw(q)
        heads = [(q[:, 4 * i:4 * i + 4].flatten(2), k[:, 4 * i:4 * i + 4].flatten(2), v[:, 8 * i:8 * i + 8].flatten(2))
                 for i in range(2)]  # (B, d, N) per head
        out = []
        for i, (qh, kh, vh) in enumerate(heads):
            logits = qh.transpose(1, 2) @ kh / 2 + attention.attention_biases[i][index]  # scale 1 / sqrt(4)
            out.append(vh @ logits.softmax(-1).transpose(1, 2))  # (B, d_v, N)
        expected = attention.proj(torch.relu(torch.cat(out, 1).reshape(2, 16, 2, 3)))
        assert torch.allclose(attention(x), expected, atol=1e-5)


def test_fixed_resolution(lsnet_t) -> None:
    assert lsnet_t.pretrained_cfg["fixed_input_size"] is True
    with pytest.raises(ValueError, match="fixed 224x224 token grid; got a 256x256 input"):
        lsnet_t(torch.randn(1, 3, 256, 256))
    with torch.device("meta"):
        bigger = metablocks.create_model("lsnet_t", img_size=288)
    assert bigger.stages[3].blocks[1].token_mixer.attention_biases.shape == (4, 25)  # 288 / 8 = 36 -> 18 -> 9 -> 5


def test_forward_backward_and_the_distilled_head() -> None:
    model = metablocks.create_model("lsnet_t_distill", num_classes=10, img_size=64).train()  # a 1x1 last map
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in model.parameters())
    head = model.head.eval()
    features = torch.randn(3, 384)[:, :, None, None]
    with torch.no_grad():
        pooled = features.flatten(1)
        assert torch.allclose(head(features), (head.fc.cls(pooled) + head.fc.dist(pooled)) / 2)
        assert torch.equal(head(features, pre_logits=True), pooled)


@pytest.mark.parametrize("pool", ["avg", "max", ""])
def test_distilled_head_runs_every_norm_and_pool(pool: str) -> None:
    for norm in ["batchnorm", "grn", "layernorm", {"type": "groupnorm", "num_groups": 2}, None]:
        model = metablocks.build_model({
            "name": "x", "img_size": 12, "num_classes": 3, "stem": {"type": "conv", "kernel_size": 4, "stride": 4,
                                                                    "padding": 0},
            "stages": [{"depth": 1, "dim": 4}], "head": {"type": "distilled", "pool": pool, "norm": norm}})
        out = model(torch.randn(2, 3, 12, 12))
        out.square().mean().backward()
        assert out.shape == ((2, 3) if pool else (2, 3, 3, 3)) and torch.isfinite(out).all()
        model.reset_classifier(5)
        assert model.eval()(torch.randn(1, 3, 12, 12)).shape[1] == 5 and isinstance(model.get_classifier(), nn.Module)


def test_component_errors_are_reported() -> None:
    lsconv = get("token_mixer", "lsconv")
    assert lsconv().check(Context(20)) == [("group_channels=8 must divide dim=20: each kernel is shared by "
                                            "group_channels channels")]
    assert lsconv(large_kernel=6).check(Context(16)) == ["large_kernel must be odd to keep the map size, got 6"]
    assert lsconv().check(Context(9))[0] == "the perception branch works on dim / 2 channels: dim must be even, got 9"
    attention = get("token_mixer", "levit_attention")
    assert attention().check(Context(64)) == [
        ("needs the map's resolution to size its attention biases (one per head and offset); give the block a "
         "resolution=(H, W) or the recipe an img_size")]
    assert attention(q_kernel=2).check(Context(64, resolution=(4, 4))) == ["q_kernel must be odd to keep the map size, got 2"]
    with pytest.raises(RecipeError, match=r"stages\[2\]\.blocks\.ls\.token_mixer: .*group_channels=8 must divide dim=252"):
        metablocks.load_recipe("lsnet_t", {"stages[2].dim": 252})
    with pytest.raises(RecipeError, match="lists 2 patterns, one per block, but stage 0 has depth 0"):
        metablocks.load_recipe("lsnet_t", {"stages[0].pattern": ["rep", "ls"]})


OFFICIAL_GMACS = {"lsnet_t": 0.316, "lsnet_s": 0.539, "lsnet_b": 1.248}  # the official flops.py (fvcore, fused BNs, SKA
# counted as a depthwise 3x3 conv), run on CPU; the README rounds them to 0.3 / 0.5 / 1.3


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZES))
def test_macs_match_the_official_count(name: str) -> None:
    """Counted on our deployed model: 0.316 / 0.538 / 1.244 (SKA's 9 C H W multiply-adds per LSConv are not counted
    by fvcore here, < 0.5%)."""
    from metablocks.analysis import count_macs

    macs = count_macs(deploy(metablocks.create_model(name).eval())).total / 1e9
    assert abs(macs / OFFICIAL_GMACS[name] - 1) <= 0.01
    assert abs(macs / SIZES[name][1][1] - 1) <= 0.08  # the README's one-decimal figure


# ------------------------------------------------------------------------------- against the official code, if present
OFFICIAL = os.environ.get("LSNET_OFFICIAL")


def direct_ska(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The official SKA (ska_fwd) as a 9-tap shifted sum: x shifted by each tap times that tap's per-pixel weight."""
    c, (k2, height, width) = x.shape[1], weight.shape[2:]
    k = round(k2 ** 0.5)
    padded = F.pad(x, ((k - 1) // 2,) * 4)
    full = weight[:, torch.arange(c) % weight.shape[1]]  # (B, C, k*k, H, W): channel c uses group c mod G
    return sum(padded[:, :, u:u + height, v:v + width] * full[:, :, u * k + v] for u in range(k) for v in range(k))


def official_module():
    """model/lsnet.py of the checkout, with model/ska.py (Triton) replaced by ``direct_ska`` and timm's registry and
    builder (whose cfg keys changed since) stepped around."""
    import importlib

    import timm.models.registry

    stub = types.ModuleType("model.ska")
    stub.SKA = type("SKA", (nn.Module,), {"forward": lambda self, x, w: direct_ska(x, w)})
    sys.modules["model.ska"] = stub
    timm.models.registry.register_model = lambda fn: fn
    sys.path.insert(0, OFFICIAL)
    module = importlib.import_module("model.lsnet")
    module.build_model_with_cfg = lambda cls, variant, pretrained, default_cfg=None, **kwargs: cls(**kwargs)
    return module


@pytest.mark.skipif(not OFFICIAL, reason="set LSNET_OFFICIAL to a checkout of THU-MIG/lsnet")
@pytest.mark.parametrize("name", ["lsnet_t", "lsnet_b", "lsnet_t_distill"])
def test_logits_equal_the_official_model_with_a_pure_pytorch_ska(name: str) -> None:
    theirs = getattr(official_module(), name.removesuffix("_distill"))(distillation=name.endswith("_distill"))
    theirs = perturbed(theirs)  # eval() after the weights: the official attention caches its biases in eval()
    ours = load_lsnet(metablocks.create_model(name).eval(), copy.deepcopy(theirs.state_dict()))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max().item() > 0.3 and (got - expected).abs().max().item() <= 1e-5
