"""GLNet (official code: rayleizhu/GLMix, models/glnet.py and models/glnet_tklb.py; timm has no GLNet).

The official code is not available here, so what was measured against it is held as data: the parameter counts of
the official models and the key/shape manifest of their state_dicts (tests/data/glnet_official_keys.json, written
once from the official code) that the converter must map onto our state_dict exactly. Outside the repository the
official models' logits were compared with ours at 224, batch 2 (the official model's random init with its 1-D
parameters, layer scales, slot scales and BN statistics perturbed, loaded into ours through load_glnet): max abs diff
4g 3.8e-6, 9g 2.6e-6, 16g 2.4e-6, stl 7.2e-7, stl_paramslot 7.2e-7, 4g_tklb 1.4e-5 (logits up to 26, 8.1, 6.7,
2.7, 2.4, 35). With nn.MultiheadAttention's fused fast path off (fvcore skips that op), our MAC counter gives the
official models exactly our counts (test_macs_match_the_readme).
The soft clustering is checked by hand on tiny tensors, the whole GLMix step against the paper's equations."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks import registry
from metablocks.components.token_mixers.glmix import GLMixConfig, cluster_logits, dispatch, group
from metablocks.interop.official import convert_official, family_of
from metablocks.interop.official.glnet import convert_glnet, load_glnet
from metablocks.recipe.errors import RecipeError
from metablocks.recipe.loader import load_recipe
from metablocks.registry import Context

MANIFEST = json.loads((Path(__file__).parent / "data" / "glnet_official_keys.json").read_text())["models"]
SIZES = {  # recipe: (embed dims, depths, parameters of the official model, README (params_m, macs_g, top1), GMACs)
    "glnet_4g": ([64, 128, 256, 512], [4, 4, 18, 4], 27_001_593, (27, 4.5, 83.7), 4.507461632),
    "glnet_9g": ([96, 192, 384, 768], [4, 4, 18, 4], 60_010_617, (60, 9.7, 84.5), 9.626164224),
    "glnet_16g": ([128, 256, 512, 1024], [4, 4, 18, 4], 106_055_161, (106, 16.7, 85.0), 16.654848),
    "glnet_stl": ([96, 192, 384, 768], [2, 2, 6, 2], 30_296_786, (30, 4.4, 82.5), 4.364818944),
    "glnet_stl_paramslot": ([96, 192, 384, 768], [2, 2, 6, 2], 30_481_106, (30, 4.4, 82.1), 4.363464192),
    "glnet_4g_tklb": ([64, 128, 256, 512], [4, 4, 18, 4], 27_514_593, (27, 4.5, 84.4), 4.532549632),
    "glnet_9g_tklb": ([96, 192, 384, 768], [4, 4, 18, 4], 60_779_617, (61, 9.7, 85.3), 9.663796224),
}
FAST = ("glnet_4g", "glnet_stl_paramslot")
ALL = [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in SIZES]


@pytest.fixture
def one_thread():
    """Small forwards run on one thread: on a shared machine more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


SMALL = {"stages[0:].depth": 1, "stages[2].depth": 2}  # stage 3 still alternates glmix / mha


def _model(name: str) -> torch.nn.Module:
    """The model without its weights (meta tensors): shapes, names and counts, in a fraction of the build time."""
    with torch.device("meta"):
        return metablocks.create_model(name)


# ------------------------------------------------------------------------------------------- the soft clustering
def test_cluster_logits_are_scaled_cosines() -> None:
    slots = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # (1, S=2, C=2): lengths do not matter
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]]])  # (1, N=3, C)
    logits = cluster_logits(slots, tokens, torch.tensor(2.0))
    r = 1 / math.sqrt(2)
    assert torch.allclose(logits, torch.tensor([[[2.0, 2 * r, 0.0], [0.0, 2 * r, 2.0]]]))


def test_group_and_dispatch_by_hand() -> None:
    """Slots e1, e2 and tokens e1, 2 e2 with scale ln 3: logits ln3 * I. Grouping weights (softmax over the tokens)
    are [3/4, 1/4] for slot 1; dispatch weights (softmax over the slots) are [3/4, 1/4] for token 1."""
    slots = torch.eye(2)[None]
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    logits = cluster_logits(slots, tokens, torch.tensor(math.log(3.0)))
    assert torch.allclose(logits, math.log(3.0) * torch.eye(2)[None])
    grouped = group(logits, tokens)  # slot i = sum_n w_in token_n
    assert torch.allclose(grouped, torch.tensor([[[0.75, 0.5], [0.25, 1.5]]]))
    back = dispatch(logits, torch.tensor([[[4.0, 0.0], [0.0, 8.0]]]))  # token n = sum_i w_ni slot_i
    assert torch.allclose(back, torch.tensor([[[3.0, 2.0], [1.0, 6.0]]]))


def test_assignment_weights_sum_to_one() -> None:
    gen = torch.Generator().manual_seed(0)
    slots, tokens = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 11, 8, generator=gen)
    logits = cluster_logits(slots, tokens, torch.tensor(7.0))
    ones = torch.ones(2, 11, 1)
    assert torch.allclose(group(logits, ones), torch.ones(2, 5, 1))  # each slot: a convex mix of the tokens
    assert torch.allclose(dispatch(logits, torch.ones(2, 5, 1)), ones)  # each token: a convex mix of the slots
    one_slot = dispatch(logits[:, :1], torch.full((2, 1, 3), 2.5))
    assert torch.allclose(one_slot, torch.full((2, 11, 3), 2.5))  # a single slot goes to every token


def test_glmix_step_follows_the_paper(one_thread) -> None:
    """x + cpe(x), then + ls * (dispatch(MHA(group(LN(x)))) + local(LN(x))), slots pooled from the step's input."""
    torch.manual_seed(0)
    step = GLMixConfig(num_heads=2, num_slots=4, cpe=3, layer_scale=0.5).build(Context(8)).eval()
    with torch.no_grad():
        step.norm.weight.uniform_(0.5, 1.5)
        step.slot_scale.fill_(3.0)
    x = torch.randn(2, 8, 6, 6)
    s0 = F.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # before the CPE: the official order
    x1 = x + step.cpe(x)
    z = F.layer_norm(x1.permute(0, 2, 3, 1), (8,), step.norm.weight, step.norm.bias, 1e-6).permute(0, 3, 1, 2)
    tokens = z.flatten(2).transpose(1, 2)
    a = 3.0 * F.normalize(s0, dim=-1) @ F.normalize(tokens, dim=-1).transpose(1, 2)  # (B, S, N)
    slots = a.softmax(-1) @ tokens
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(step.attn.qkv.weight)
        mha.in_proj_bias.copy_(step.attn.qkv.bias)
        mha.out_proj.weight.copy_(step.attn.proj.weight)
        mha.out_proj.bias.copy_(step.attn.proj.bias)
        slots = mha(slots, slots, slots, need_weights=False)[0]
        y = (a.transpose(1, 2).softmax(-1) @ slots).transpose(1, 2).reshape(2, 8, 6, 6) + step.local(z)
        assert torch.allclose(step(x), x1 + 0.5 * y, atol=1e-5)


def test_learned_slots_and_no_cpe() -> None:
    step = GLMixConfig(head_dim=4, num_slots=3, slot_init="param").build(Context(8))
    assert step.cpe is None and step.init_slots.shape == (1, 3, 8)
    assert step(torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)


def test_mlp_dw_by_hand() -> None:
    mlp = registry.get("channel_mixer", "mlp_dw")(ratio=2).build(Context(3))
    x = torch.randn(1, 3, 5, 5)
    h = mlp.fc1(x)
    assert torch.allclose(mlp(x), mlp.fc2(F.gelu(h + mlp.dw(h))))
    assert mlp.dw.groups == 6 and mlp.dw.kernel_size == (3, 3)


def test_token_label_head_by_hand() -> None:
    head = registry.get("head", "token_label")(norm="batchnorm").build(Context(16, out_dim=7)).eval()
    x = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        head.norm.running_mean.uniform_(-1, 1)
        tokens = head.norm(x).flatten(2).transpose(1, 2)
        expected = head.fc(tokens.mean(1)) + 0.5 * head.aux(tokens).max(1)[0]
        assert torch.allclose(head(x), expected, atol=1e-6)
        assert head(x, pre_logits=True).shape == (2, 16)
    with pytest.raises(ValueError, match="only 'avg' is supported"):
        head.reset(5, "max")
    head.reset(0)
    assert head(x).shape == (2, 16)


# ------------------------------------------------------------------------------------------------ the whole models
@pytest.mark.parametrize("name", ALL)
def test_recipe_records_the_readme(name: str) -> None:
    dims, depths, _, paper, _ = SIZES[name]
    recipe = load_recipe(name)
    assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
    assert [s.depth for s in recipe.stages] == depths and [s.dim for s in recipe.stages] == dims
    assert recipe.timm_name is None  # timm does not implement GLNet


def test_stage_patterns() -> None:
    patterns = [s.pattern for s in load_recipe("glnet_4g").stages]
    assert patterns == [["glmix"], ["glmix"], ["glmix", "mha"], ["mha"]]  # stage 3 alternates, as 'glmix.mha_nchw'
    assert [s.pattern for s in load_recipe("glnet_stl").stages] == [["glmix"], ["glmix"], ["glmix"], ["mha"]]


@pytest.mark.parametrize("name", ALL)
def test_params_equal_the_official_models(name: str) -> None:
    assert n_params(_model(name)) == MANIFEST[name]["params"] == SIZES[name][2]


@pytest.mark.parametrize("name", ALL)
def test_converter_maps_the_official_state_dict_onto_ours(name: str) -> None:
    """Every official key, renamed, is one of ours with our shape, and nothing of ours is left out; loads strictly."""
    official = {key: torch.zeros(shape, device="meta") for key, shape in MANIFEST[name]["keys"]}
    converted = convert_glnet(official)
    model = _model(name)
    assert len(converted) == len(official)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    load_glnet(model, official)  # strictly


@pytest.mark.parametrize("name", ALL)
def test_convert_official_takes_the_official_state_dict(name: str) -> None:
    """The registry finds the glnet converter from the recipe name and places every official key (nothing dropped)."""
    official = {key: torch.zeros(shape, device="meta") for key, shape in MANIFEST[name]["keys"]}
    assert family_of(name) == "glnet"
    model = convert_official(official, _model(name))
    assert model.official_dropped == []


def test_converter_names_by_hand() -> None:
    pairs = {
        "downsample_layers.0.1.weight": "stem.layers.0.conv.weight",
        "downsample_layers.0.5.running_var": "stem.layers.1.norm.running_var",
        "downsample_layers.2.1.bias": "stages.2.downsample.norm.bias",
        "stages.2.blocks.0.slot_scale": "stages.2.blocks.0.token_mixer.slot_scale",
        "stages.2.blocks.0.pos_conv.weight": "stages.2.blocks.0.token_mixer.cpe.weight",
        "stages.2.blocks.0.norm1.weight": "stages.2.blocks.0.token_mixer.norm.weight",
        "stages.2.blocks.0.relation_mha.in_proj_weight": "stages.2.blocks.0.token_mixer.attn.qkv.weight",
        "stages.2.blocks.0.relation_mha.out_proj.bias": "stages.2.blocks.0.token_mixer.attn.proj.bias",
        "stages.2.blocks.0.feature_conv.1.weight": "stages.2.blocks.0.token_mixer.local.1.weight",
        "stages.2.blocks.0.norm2.bias": "stages.2.blocks.0.norm1.bias",
        "stages.2.blocks.0.mlp.1.weight": "stages.2.blocks.0.channel_mixer.dw.weight",
        "stages.2.blocks.0.ls1.gamma": "stages.2.blocks.0.token_mixer.layer_scale.scale",
        "stages.2.blocks.0.ls2.gamma": "stages.2.blocks.0.layer_scale2.scale",
        "stages.2.blocks.1.pos_conv.bias": "stages.2.blocks.1.cpe.conv.bias",
        "stages.2.blocks.1.norm1.weight": "stages.2.blocks.1.norm1.weight",
        "stages.2.blocks.1.mha_op.in_proj_bias": "stages.2.blocks.1.token_mixer.qkv.bias",
        "stages.2.blocks.1.norm2.weight": "stages.2.blocks.1.norm2.weight",
        "stages.2.blocks.1.mlp.3.weight": "stages.2.blocks.1.channel_mixer.fc2.weight",
        "stages.2.blocks.1.ls1.gamma": "stages.2.blocks.1.layer_scale2.scale",
        "stages.2.blocks.1.ls2.gamma": "stages.2.blocks.1.layer_scale3.scale",
        "norm.running_mean": "head.norm.running_mean",
        "head.weight": "head.fc.weight",
        "tklb_aux_head.bias": "head.aux.bias",
    }
    converted = convert_glnet({k: torch.zeros(1, 4, 1, 1) if ".ls" in k else torch.zeros(1) for k in pairs})
    assert list(converted) == list(pairs.values())
    assert converted["stages.2.blocks.1.layer_scale3.scale"].shape == (4,)  # (1, C, 1, 1) -> (C,)


def test_converter_reshapes_layer_scales_keeping_values() -> None:
    gamma = torch.arange(4.0).reshape(1, 4, 1, 1)
    out = convert_glnet({"stages.0.blocks.0.relation_mha.out_proj.bias": torch.zeros(4),
                         "stages.0.blocks.0.ls1.gamma": gamma, "stages.3.blocks.0.ls1.gamma": torch.arange(4.0)})
    assert torch.equal(out["stages.0.blocks.0.token_mixer.layer_scale.scale"], torch.arange(4.0))
    assert torch.equal(out["stages.3.blocks.0.layer_scale2.scale"], torch.arange(4.0))  # an MHSA block's (C,) ls1


def test_converter_reads_the_patchify_stem() -> None:
    """glnet_stl: downsample_layers.0 is conv 4x4 + BN; the transitions are BN then conv (norm.proj)."""
    out = convert_glnet({"downsample_layers.0.0.weight": torch.zeros(1), "downsample_layers.0.1.bias": torch.zeros(1),
                         "downsample_layers.2.0.running_mean": torch.zeros(1),
                         "downsample_layers.2.1.weight": torch.zeros(1)})
    assert list(out) == ["stem.layers.0.conv.weight", "stem.layers.0.norm.bias", "stages.2.downsample.norm.running_mean",
                         "stages.2.downsample.conv.weight"]


def test_load_refuses_a_state_dict_that_does_not_fit() -> None:
    official = {key: torch.zeros(shape, device="meta") for key, shape in MANIFEST["glnet_stl"]["keys"]}
    with pytest.raises(ValueError, match="the official GLNet weights do not fit this model"):
        load_glnet(_model("glnet_stl_paramslot"), official)  # no learned slots in glnet_stl


def test_block_structure() -> None:
    """glmix blocks: the mixer owns the CPE, its norm and the drop path; mha blocks: CPE branch with no drop path."""
    model = metablocks.create_model("glnet_4g", img_size=32, drop_path_rate=0.1, overrides=SMALL)
    glmix, mha = model.stages[2].blocks
    assert [n for n, _ in glmix.named_children()] == ["token_mixer", "norm1", "channel_mixer", "drop_path2"]
    assert glmix.token_mixer.drop_path.p == glmix.drop_path2.p > 0 and glmix.token_mixer.norm.eps == 1e-6
    assert glmix.token_mixer.attn.num_heads == 8 and glmix.token_mixer.pool_size == 8
    assert [n for n, _ in mha.named_children()][:3] == ["cpe", "norm1", "token_mixer"]
    assert not hasattr(mha, "drop_path1") and mha.drop_path2.p == mha.drop_path3.p > 0
    assert mha.channel_mixer.fc1.out_channels == 3 * 256


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZES))
def test_macs_match_the_readme(name: str) -> None:
    """Our counter gives the official models (MHA fast path off) exactly these GMACs; the README rounds them."""
    from metablocks.analysis import count_macs

    gmacs = count_macs(metablocks.create_model(name).eval()).total / 1e9
    assert abs(gmacs - SIZES[name][4]) < 1e-6 and abs(gmacs - SIZES[name][3][1]) / SIZES[name][3][1] < 0.02


def test_forward_backward_small(one_thread) -> None:
    model = metablocks.create_model("glnet_4g", img_size=32, num_classes=10, drop_path_rate=0.1,
                                    overrides=SMALL).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------------------------ errors
def test_slots_that_are_not_a_square_are_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("glnet_4g", {"blocks.glmix.token_mixer.num_slots": 60})
    assert "num_slots=60 is not a square" in str(err.value) and "token_mixer" in str(err.value)


def test_heads_that_do_not_divide_are_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("glnet_4g", {"blocks.glmix.token_mixer.head_dim": 48})
    assert "dim=64 is not 1 heads of 48 channels" in str(err.value)


def test_even_kernels_are_recipe_errors() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("glnet_4g", {"blocks.glmix.token_mixer.kernel_size": 4, "block.channel_mixer.kernel_size": 2})
    message = str(err.value)
    assert "kernel_size must be odd to keep the map size, got 4" in message
    assert "kernel_size must be odd to keep the map size, got 2" in message
