"""BiFormer T/S/B (official code: rayleizhu/BiFormer, models/biformer.py + ops/bra_legacy.py; timm has no BiFormer).

The official code is not available here, so what was measured against it is held as data: the parameter counts of
the official models, and the key/shape manifest of their state_dicts (tests/data/biformer_official_keys.json,
written once from the official code) that the converter must map onto our state_dict exactly. Outside the
repository the official models' logits were compared with ours at 224 (the official model's random init with its
1-D parameters and BN statistics perturbed, loaded into ours through load_biformer): max abs diff T 4.8e-7, S 1.9e-6,
B 4.8e-6 (logits up to 2.7, 10.0, 18.2).
The routing is checked by hand on tiny tensors, the whole mixer against a slow per-region reference."""
import json
from pathlib import Path

import pytest
import torch

import metablocks
from metablocks.components.token_mixers.attention_lepe import AttentionLePEConfig
from metablocks.components.token_mixers.bra import BiLevelRoutingAttentionConfig, gather_regions, regions, route
from metablocks.interop.official.biformer import convert_biformer, load_biformer
from metablocks.recipe.errors import RecipeError
from metablocks.recipe.loader import load_recipe
from metablocks.registry import Context


def test_regions_by_hand() -> None:
    """A 4x4 map numbered row-major, 2x2 regions: region r = (row j, column i) is r = 2j + i, read row-major."""
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    assert regions(x, 2)[0, ..., 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_routing_by_hand() -> None:
    """Four regions of two tokens; region-mean queries q_r and keys k_s chosen so that the affinities q_r . k_s are
    integers without ties: each region keeps its two best regions, best first."""
    q_mean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    k_mean = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, -1.0]])
    spread = torch.tensor([[0.5, -0.5], [-0.5, 0.5]])  # two tokens per region around its mean
    q = (q_mean[:, None, :] + spread)[None]  # (1, 4 regions, 2 tokens, 2 channels)
    k = (k_mean[:, None, :] + spread)[None]
    # affinities: r0 [2, 1, 0, -1], r1 [0, 1, 2, -1], r2 [-2, -1, 0, 1], r3 [0, -1, -2, 1]
    assert route(q, k, topk=2, scale=1.0)[0].tolist() == [[0, 1], [2, 1], [3, 2], [3, 0]]
    assert route(q, k, topk=1, scale=0.5)[0].tolist() == [[0], [2], [3], [3]]  # a positive scale keeps the order


def test_routing_takes_no_gradient() -> None:
    q = torch.randn(1, 4, 2, 3, requires_grad=True)
    assert not route(q, q, topk=2, scale=1.0).requires_grad


def test_gather_by_hand() -> None:
    kv = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2, 1)  # 2 samples, 3 regions of 2 tokens
    index = torch.tensor([[[2, 0], [1, 1], [0, 2]], [[1, 0], [2, 2], [0, 1]]])
    got = gather_regions(kv, index)[..., 0].tolist()  # (2, 3 regions, 2 routed x 2 tokens)
    assert got[0] == [[4, 5, 0, 1], [2, 3, 2, 3], [0, 1, 4, 5]]
    assert got[1] == [[8, 9, 6, 7], [10, 11, 10, 11], [6, 7, 8, 9]]  # the second sample's own regions


def reference_bra(mixer, x: torch.Tensor) -> torch.Tensor:
    """The algorithm of ops/bra_legacy.py, slowly: loop over samples and regions; route by the region means of q and
    k (scale 1/sqrt(C) of all heads together, as the official code); softmax over the routed regions' tokens per
    head; add a depthwise conv of V over the whole map; project."""
    b, height, width, c = x.shape
    n, heads, topk = mixer.n_win, mixer.num_heads, mixer.topk
    h, w = height // n, width // n
    q, k, v = mixer.qkv(x).split(c, dim=-1)
    lepe = mixer.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    cells = [(j, i) for j in range(n) for i in range(n)]

    def region(t, sample, cell):
        j, i = cell
        return t[sample, j * h:(j + 1) * h, i * w:(i + 1) * w].reshape(h * w, c)

    out = torch.zeros_like(x)
    scale = c ** -0.5
    for s in range(b):
        q_means = torch.stack([region(q, s, cell).mean(0) for cell in cells])
        k_means = torch.stack([region(k, s, cell).mean(0) for cell in cells])
        for r, (j, i) in enumerate(cells):
            routed = torch.topk((q_means[r] * scale) @ k_means.T, topk).indices.tolist()
            keys = torch.cat([region(k, s, cells[t]) for t in routed])  # (topk*h*w, C)
            values = torch.cat([region(v, s, cells[t]) for t in routed])
            queries = region(q, s, (j, i))
            d = c // heads
            res = torch.cat([torch.softmax(queries[:, m * d:(m + 1) * d] @ keys[:, m * d:(m + 1) * d].T * scale, -1)
                             @ values[:, m * d:(m + 1) * d] for m in range(heads)], dim=-1)
            out[s, j * h:(j + 1) * h, i * w:(i + 1) * w] = res.reshape(h, w, c)
    return mixer.proj(out + lepe)


@pytest.mark.parametrize(("n_win", "topk", "map_size"), [(2, 1, (4, 4)), (3, 4, (6, 9)), (7, 16, (14, 14))])
def test_bra_equals_per_region_reference(n_win: int, topk: int, map_size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    mixer = BiLevelRoutingAttentionConfig(n_win=n_win, topk=topk, head_dim=8).build(
        Context(32, resolution=map_size)).eval()
    x = torch.randn(2 if n_win < 7 else 1, *map_size, 32)  # samples route apart: two where it is cheap
    with torch.no_grad():
        assert torch.allclose(mixer(x), reference_bra(mixer, x), atol=1e-5)


def test_topk_all_regions_is_global_attention() -> None:
    """Routing every region to every region is plain attention over the whole map (plus LePE)."""
    torch.manual_seed(0)
    mixer = BiLevelRoutingAttentionConfig(n_win=2, topk=4, head_dim=8).build(Context(16, resolution=(4, 6))).eval()
    x = torch.randn(1, 4, 6, 16)
    q, k, v = mixer.qkv(x).flatten(1, 2).split(16, -1)
    heads = [slice(m * 8, (m + 1) * 8) for m in range(2)]
    attn = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 4.0, -1) @ v[..., s] for s in heads], -1)
    lepe = mixer.lepe(v.reshape(1, 4, 6, 16).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mixer.proj(attn.reshape(1, 4, 6, 16) + lepe), atol=1e-5)


def test_attention_lepe_by_formula() -> None:
    """proj(softmax(q k^T / sqrt(d)) v + dwconv(x)): the conv reads the mixer's input, not V (official code)."""
    torch.manual_seed(0)
    mixer = AttentionLePEConfig(num_heads=2).build(Context(16)).eval()
    x = torch.randn(2, 3, 5, 16)
    q, k, v = mixer.qkv(x.flatten(1, 2)).split(16, -1)
    heads = [slice(m * 8, (m + 1) * 8) for m in range(2)]
    attn = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 8 ** 0.5, -1) @ v[..., s] for s in heads], -1)
    lepe = mixer.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mixer.proj(attn.reshape(2, 3, 5, 16) + lepe), atol=1e-5)
    assert mixer.qkv.bias is None and mixer.proj.bias is not None  # qkv_bias False, proj bias, as the official


def test_bra_checks() -> None:
    config = BiLevelRoutingAttentionConfig(topk=4, head_dim=32)
    assert config.check(Context(64, resolution=(56, 56), stage=0)) == []
    assert config.check(Context(64, resolution=(40, 40), stage=1)) == [
        ("n_win=7 does not divide the 40x40 map of stage 1: the map is cut into 7x7 regions, so its sides must be "
         "multiples of 7")]
    assert BiLevelRoutingAttentionConfig(n_win=2, topk=5).check(Context(64, resolution=(4, 4))) == [
        "topk=5 exceeds the n_win x n_win = 4 regions there are"]
    assert BiLevelRoutingAttentionConfig(head_dim=48).check(Context(64)) == [
        "dim=64 is not num_heads=1 x head_dim=48"]
    assert BiLevelRoutingAttentionConfig(lepe_kernel_size=4).check(Context(64)) == [
        "lepe_kernel_size must be odd to keep the map size, got 4"]


def test_bra_refuses_a_map_it_cannot_cut() -> None:
    mixer = BiLevelRoutingAttentionConfig(topk=1).build(Context(32))
    with pytest.raises(ValueError, match="sides of a 8x14 map are not multiples of 7"):
        mixer(torch.randn(1, 8, 14, 32))


# ------------------------------------------------------------------------------------------------ the whole models
MANIFEST = json.loads((Path(__file__).parent / "data" / "biformer_official_keys.json").read_text())["models"]
SIZES = {  # recipe: (embed dims, depths, parameters of the official model, README (params_m, macs_g, top1))
    "biformer_tiny": ([64, 128, 256, 512], [2, 2, 8, 2], 13_142_760, (13.1, 2.2, 81.4)),
    "biformer_small": ([64, 128, 256, 512], [4, 4, 18, 4], 25_536_232, (25.5, 4.5, 83.8)),
    "biformer_base": ([96, 192, 384, 768], [4, 4, 18, 4], 56_804_968, (56.8, 9.8, 84.3)),
}
SLOW = [pytest.param("biformer_small", marks=pytest.mark.slow), pytest.param("biformer_base", marks=pytest.mark.slow)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def biformer_tiny():
    return metablocks.create_model("biformer_tiny").eval()


def _model(name: str, tiny):
    return tiny if name == "biformer_tiny" else metablocks.create_model(name).eval()


def test_recipes_record_the_readme() -> None:
    for name, (dims, depths, _, paper) in SIZES.items():
        recipe = load_recipe(name)
        assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
        assert [s.depth for s in recipe.stages] == depths and [s.dim for s in recipe.stages] == dims
        assert [s.token_mixer[0].type for s in recipe.stages] == ["bra", "bra", "bra", "attention_lepe"]
        assert [s.token_mixer[0].topk for s in recipe.stages[:3]] == [1, 4, 16]
        assert recipe.timm_name is None  # timm does not implement BiFormer


@pytest.mark.parametrize("name", ["biformer_tiny", *SLOW])
def test_params_equal_the_official_models(name: str, biformer_tiny) -> None:
    model = _model(name, biformer_tiny)
    assert n_params(model) == MANIFEST[name]["params"] == SIZES[name][2]
    assert round(SIZES[name][2] / 1e6, 1) == SIZES[name][3][0]  # the README's 13.1M, 25.5M, 56.8M


@pytest.mark.parametrize("name", ["biformer_tiny", *SLOW])
def test_converter_maps_the_official_state_dict_onto_ours(name: str, biformer_tiny) -> None:
    """Every official key, renamed, is one of ours with the official shape, and nothing of ours is left out."""
    official = {key: torch.zeros(shape) for key, shape in MANIFEST[name]["keys"]}
    converted = convert_biformer(official)
    ours = _model(name, biformer_tiny).state_dict()
    assert len(converted) == len(official)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_converter_names_by_hand() -> None:
    pairs = {
        "downsample_layers.0.0.weight": "stem.layers.0.conv.weight",
        "downsample_layers.0.4.running_var": "stem.layers.1.norm.running_var",
        "downsample_layers.2.1.bias": "stages.2.downsample.norm.bias",
        "stages.1.0.pos_embed.weight": "stages.1.blocks.0.cpe.conv.weight",
        "stages.2.7.attn.qkv.qkv.weight": "stages.2.blocks.7.token_mixer.qkv.weight",
        "stages.2.7.attn.wo.bias": "stages.2.blocks.7.token_mixer.proj.bias",
        "stages.3.1.attn.lepe.weight": "stages.3.blocks.1.token_mixer.lepe.weight",
        "stages.0.1.mlp.3.weight": "stages.0.blocks.1.channel_mixer.fc2.weight",
        "norm.running_mean": "head.norm.running_mean",
        "head.weight": "head.fc.weight",
    }
    assert list(convert_biformer({k: torch.zeros(1) for k in pairs})) == list(pairs.values())


def test_load_refuses_a_state_dict_that_does_not_fit(biformer_tiny) -> None:
    official = {key: torch.zeros(shape) for key, shape in MANIFEST["biformer_small"]["keys"]}
    with pytest.raises(ValueError, match="the official BiFormer weights do not fit this model"):
        load_biformer(biformer_tiny, official)


def test_block_structure(biformer_tiny) -> None:
    """CPE first, with no norm and no drop path even when the model has a drop-path rate; LayerNorm eps 1e-6."""
    model = metablocks.create_model("biformer_tiny", drop_path_rate=0.1)
    block = model.stages[2].blocks[3]
    assert [name for name, _ in block.named_children()][:3] == ["cpe", "norm1", "token_mixer"]
    assert not hasattr(block, "drop_path1") and block.drop_path2.p == block.drop_path3.p > 0
    assert block.norm1.eps == 1e-6 and block.channel_mixer.fc1.out_features == 3 * 256
    heads = [s.blocks[0].token_mixer.num_heads for s in biformer_tiny.stages]
    assert heads == [2, 4, 8, 8]  # C/32 in BRA; the official AttentionLePE keeps its default 8


@pytest.mark.parametrize("name", ["biformer_tiny", *SLOW])
def test_macs_match_the_readme(name: str, biformer_tiny) -> None:
    """Our counter gives the official model 2.228 / 4.487 / 9.795 GMACs (measured outside the repository)."""
    from metablocks.analysis import count_macs

    gmacs = count_macs(_model(name, biformer_tiny)).total / 1e9
    official = {"biformer_tiny": 2.228, "biformer_small": 4.487, "biformer_base": 9.795}[name]
    assert abs(gmacs - official) < 0.001 and abs(gmacs - SIZES[name][3][1]) / SIZES[name][3][1] < 0.02


def test_forward_backward_at_another_resolution() -> None:
    """112: maps 28, 14, 7, 4 -- 7 regions still divide the first three (stage 2: regions of one token)."""
    model = metablocks.create_model("biformer_tiny", img_size=112, num_classes=10,
                                    overrides={"stages[0:].depth": 1}).train()
    out = model(torch.randn(1, 3, 112, 112))
    assert out.shape == (1, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_map_that_regions_do_not_divide_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("biformer_tiny", {"img_size": 160})  # maps 40, 20, 10, 5
    message = str(err.value)
    assert "n_win=7 does not divide the 40x40 map of stage 0" in message
    assert "n_win=7 does not divide the 10x10 map of stage 2" in message
    assert "biformer.yaml:" in message and "stages[2].token_mixer" in message


def test_resolved_dump_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe("biformer_tiny")
    (tmp_path / "resolved.yaml").write_text(recipe.to_yaml())
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again.model_id == recipe.model_id and again.dump() == recipe.dump()
    assert recipe.stages[0].slots["cpe"].kernel_size == 3 and recipe.stages[0].branches[0].drop_path is False
