"""TransNeXt Micro/Tiny/Small/Base (official code: DaiShiResearch/TransNeXt, classification/transnext.py with the
pure-PyTorch attention_native.py; timm has no TransNeXt).

The official code is not available in CI, so what was measured against it is held as data: the parameter counts of
the official models and the key/shape manifest of their state_dicts (tests/data/transnext_official_keys.json,
written once from the official code), which the converter must map onto our state_dict exactly. Outside the
repository the official models' logits were compared with ours at 224 (test_logits_equal_the_official_model, which
runs when TRANSNEXT_OFFICIAL names the official classification/ folder; the official random init with its 1-D
parameters, temperatures, query embeddings, learnable tokens/bias and local position biases perturbed, loaded into
ours through convert_official): max abs diff Micro 4.2e-7, Tiny 5.4e-7, Small 6.0e-7, Base 8.3e-7 (logits up to
1.5, 2.2, 2.1, 2.4); Micro at 384 with pretrain_size 224 (the 384 recipes' cpb_pretrain_size) 3.0e-7. The official
CPB tables equal cpb_table bit for bit (56/28/14/7 maps against 7x7 keys, 96 at pretrain 56, odd shapes).
The attention's pieces are checked by hand on tiny grids, the whole aggregated attention against a slow per-pixel
reference of the paper's equations.
"""
import functools
import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.components.common.cpb import cpb_table
from metablocks.components.token_mixers.aggregated_attention import AggregatedAttentionConfig, window_mask
from metablocks.components.token_mixers.cpb_attention import CpbAttentionConfig
from metablocks.interop.official import convert_official, families
from metablocks.interop.official.transnext import convert_transnext
from metablocks.recipe.errors import RecipeError
from metablocks.recipe.loader import load_recipe
from metablocks.registry import Context

L8 = math.log2(8)


# ------------------------------------------------------------------------------------------------ the CPB table
def test_cpb_table_of_a_grid_with_itself_by_hand() -> None:
    """3x3 queries and keys: offsets -2..2 per axis, x 8 / (3 - 1) = -8, -4, 0, 4, 8, then sign * log2(|x| + 1) / 3;
    25 distinct pairs, sorted; each (query, key) pair points at its offset."""
    index, coords = cpb_table((3, 3), (3, 3))
    axis = [-math.log2(9) / L8, -math.log2(5) / L8, 0.0, math.log2(5) / L8, math.log2(9) / L8]
    assert coords.shape == (25, 2) and index.shape == (81,)
    assert torch.allclose(coords, torch.tensor([[a, b] for a in axis for b in axis]))
    pair = index.view(9, 9)
    assert pair[0, 8] == 0 and pair[8, 0] == 24 and pair[4, 4] == 12  # (0,0)-(2,2): (-8, -8); the reverse; (0, 0)
    assert pair[1, 3].item() == 5 * 1 + 3  # query (0, 1), key (1, 0): offset (-1, +1) -> (-4, +4)


def test_cpb_table_of_pooled_keys_by_hand() -> None:
    """2x2 queries, one key: the pooled cell's centre is the mean position (0.5, 0.5), so every offset is +-0.5 x 8 =
    +-4 (log2(5) / 3 after the log spacing); four distinct coordinates, one per query."""
    index, coords = cpb_table((2, 2), (1, 1))
    c = math.log2(5) / L8
    assert torch.allclose(coords, torch.tensor([[-c, -c], [-c, c], [c, -c], [c, c]]))
    assert index.tolist() == [0, 1, 2, 3]


def test_cpb_table_scales_by_the_pretrain_grid() -> None:
    """A 4x4 map pretrained as 3x3: offsets are scaled by 8 / (3 - 1) = 4, not 8 / 3 (the map's own)."""
    _, coords = cpb_table((4, 4), (4, 4), (3, 3))
    largest = 3 * 8 / 2  # offset 3 on a pretrain side of 3
    assert math.isclose(coords.max().item(), math.log2(largest + 1) / L8, rel_tol=1e-6)
    _, own = cpb_table((4, 4), (4, 4))
    assert math.isclose(own.max().item(), math.log2(3 * 8 / 3 + 1) / L8, rel_tol=1e-6)


def test_window_mask_and_length_scale_by_hand() -> None:
    """A 3x3 map, 3x3 windows: a corner sees 4 pixels, an edge 6, the centre 9; with sr_ratio 3 there is one pooled
    key, so the length scale is log(4 + 1), log(6 + 1), log(9 + 1). Outside pixels are masked in row-major order."""
    count, outside = window_mask((3, 3), 3)
    assert count.view(3, 3).tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    assert outside[0].tolist() == [True, True, True, True, False, False, True, False, False]  # top-left corner
    assert not outside[4].any()
    mixer = AggregatedAttentionConfig(num_heads=1, sr_ratio=3).build(Context(8, resolution=(3, 3)))
    expected = torch.log(torch.tensor([[5.0, 7, 5], [7, 10, 7], [5, 7, 5]])).view(9, 1, 1)
    assert torch.allclose(mixer.seq_length_scale, expected)


def test_temperature_starts_at_1_over_0_24() -> None:
    mixer = CpbAttentionConfig(num_heads=2).build(Context(8, resolution=(2, 2)))
    assert torch.allclose(F.softplus(mixer.temperature), torch.full((2, 1, 1), 1 / 0.24))


# ------------------------------------------------------------------------------------------- the attention maths
def test_length_scaled_cosine_attention_by_hand() -> None:
    """One head, q = k = v = x, temperature 1, no query embedding, no position bias, identity projection: a query's
    logits are cos(q, k_j) x log(4) on a 2x2 map, so the weights are 4^cos. Tokens e1, e2, -e1, e2: the first sees
    cosines 1, 0, -1, 0 -> weights 4, 1, 1/4, 1 (sum 6.25) -> (4 - 1/4, 2) / 6.25 = (0.6, 0.32)."""
    mixer = CpbAttentionConfig(num_heads=1).build(Context(2, resolution=(2, 2))).eval()
    with torch.no_grad():
        mixer.qkv.weight.copy_(torch.eye(2).repeat(3, 1))
        mixer.qkv.bias.zero_()
        mixer.proj.weight.copy_(torch.eye(2))
        mixer.proj.bias.zero_()
        mixer.temperature.fill_(math.log(math.e - 1))  # softplus = 1
        mixer.query_embedding.zero_()
        mixer.cpb_fc2.weight.zero_()
        mixer.cpb_fc2.bias.zero_()
        x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]]).view(1, 2, 2, 2)
        out = mixer(x).view(4, 2)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.32]), atol=1e-6)
    # the second token (e2) sees cosines 0, 1, 0, 1 -> weights 1, 4, 1, 4 (sum 10) -> (1 - 1, 8) / 10
    assert torch.allclose(out[1], torch.tensor([0.0, 0.8]), atol=1e-6)


def reference_aggregated(m, x: torch.Tensor) -> torch.Tensor:
    """The paper's pixel-focused attention, one pixel at a time: its in-map 3x3 neighbours and the pooled cells in
    one softmax; position-bias coordinates computed directly for the pixel and the pooled cell's centre."""
    _, height, width, c = x.shape
    heads, d, ws = m.num_heads, m.head_dim, m.window_size
    ph, pw = m.pool_size
    q_all = F.normalize(m.q(x)[0].view(height, width, heads, d), dim=-1)
    k_all, v_all = m.kv(x)[0].view(height, width, 2, heads, d).unbind(2)
    k_all = F.normalize(k_all, dim=-1)
    pooled = F.adaptive_avg_pool2d(F.gelu(m.sr(x.permute(0, 3, 1, 2))), (ph, pw))[0].flatten(1).T  # (P, C)
    k_pool, v_pool = m.kv(m.norm(pooled)).view(ph * pw, 2, heads, d).unbind(1)
    k_pool = F.normalize(k_pool, dim=-1)
    centres = [((i * height / ph + ((i + 1) * height / ph) - 1) / 2, (j * width / pw + ((j + 1) * width / pw) - 1) / 2)
               for i in range(ph) for j in range(pw)]  # adaptive pooling cells' mean positions (divisible maps)

    def log_spaced(t: float, side: int) -> float:
        t = t / (side - 1) * 8
        return math.copysign(math.log2(abs(t) + 1) / 3, t) if t else 0.0

    out = torch.zeros(height, width, heads, d)
    tau = F.softplus(m.temperature).view(heads)
    for y in range(height):
        for x0 in range(width):
            nb = [(y + dy, x0 + dx, l) for l, (dy, dx) in enumerate((a - ws // 2, b - ws // 2) for a in range(ws)
                                                                     for b in range(ws))
                  if 0 <= y + dy < height and 0 <= x0 + dx < width]
            scale = tau * math.log(len(nb) + ph * pw)  # (heads,)
            q = q_all[y, x0]  # (heads, d)
            qs = (q + m.query_embedding.view(heads, d)) * scale[:, None]
            local = torch.stack([(qs * k_all[yy, xx]).sum(-1) + m.relative_pos_bias_local[:, l] for yy, xx, l in nb], -1)
            coords = torch.tensor([[log_spaced(y - cy, height), log_spaced(x0 - cx, width)] for cy, cx in centres])
            bias = m.cpb_fc2(F.relu(m.cpb_fc1(coords))).T  # (heads, P)
            pool = (qs[:, None, :] * k_pool.transpose(0, 1)).sum(-1) + bias  # (heads, P)
            attn = torch.cat([local, pool], -1).softmax(-1)
            for i, (yy, xx, l) in enumerate(nb):
                weight = attn[:, i] + (q * m.learnable_tokens[:, :, l]).sum(-1) + m.learnable_bias[:, 0, l]
                out[y, x0] += weight[:, None] * v_all[yy, xx]
            out[y, x0] += torch.einsum("hp,phd->hd", attn[:, len(nb):], v_pool)
    return m.proj(out.reshape(1, height, width, c))


@pytest.mark.parametrize(("resolution", "sr_ratio", "heads"), [((4, 4), 2, 2), ((6, 8), 2, 1), ((5, 5), 5, 2)])
def test_aggregated_attention_equals_a_per_pixel_reference(resolution, sr_ratio: int, heads: int) -> None:
    torch.manual_seed(0)
    m = AggregatedAttentionConfig(num_heads=heads, sr_ratio=sr_ratio).build(Context(8, resolution=resolution)).eval()
    with torch.no_grad():  # every learnable piece away from its init, so each one matters
        for p in (m.temperature, m.query_embedding, m.relative_pos_bias_local, m.learnable_tokens, m.learnable_bias,
                  m.norm.weight, m.norm.bias, m.cpb_fc2.bias):
            p.add_(torch.randn_like(p) * 0.5)
        x = torch.randn(1, *resolution, 8)
        assert torch.allclose(m(x), reference_aggregated(m, x), atol=1e-5)


def test_learnable_tokens_act_on_the_local_values() -> None:
    """The query-dependent local term q/|q| . learnable_tokens + learnable_bias adds to the softmax weights: with the
    tokens zero and the bias b, each output gains b x the sum of its in-map neighbours' values."""
    torch.manual_seed(0)
    m = AggregatedAttentionConfig(num_heads=1, sr_ratio=2).build(Context(4, resolution=(2, 2))).eval()
    x = torch.randn(1, 2, 2, 4)
    with torch.no_grad():
        m.learnable_tokens.zero_()
        base = m(x)
        m.learnable_bias.fill_(0.5)
        shifted = m(x)
        v = m.kv(x)[..., 4:]  # every pixel of a 2x2 map is in every other's window
    assert torch.allclose(shifted - base, m.proj.weight @ (0.5 * v.sum((1, 2))[0]) * torch.ones(2, 2, 1), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- checks
def test_checks_say_what_does_not_fit() -> None:
    agg = AggregatedAttentionConfig(head_dim=24, sr_ratio=8)
    assert agg.check(Context(48, resolution=(56, 56))) == []
    assert agg.check(Context(48, resolution=(6, 9))) == [
        "sr_ratio=8 pools the 6x9 map to 0x1 keys: the map needs sides of at least 8"]
    assert agg.check(Context(48)) == [
        "aggregated_attention is built for a fixed token grid (its position-bias tables and length scales are sized "
        "by the map): it needs the map's resolution; give the recipe an img_size"]
    assert AggregatedAttentionConfig(num_heads=5, window_size=4, sr_ratio=1).check(Context(48, resolution=(8, 8))) == [
        "dim=48 is not num_heads=5 x head_dim=9", "window_size must be odd (the window is centred on its query), got 4"]
    assert CpbAttentionConfig(head_dim=24).check(Context(48, resolution=(1, 1))) == [
        "cpb_attention scales relative coordinates by the map's side - 1, so it needs a map of at least 2x2; got a 1x1 map"]
    assert CpbAttentionConfig(head_dim=24, cpb_pretrain_size=1).check(Context(48, resolution=(7, 7))) == [
        "cpb_attention scales relative coordinates by the map's side - 1, so it needs a map of at least 2x2; got "
        "cpb_pretrain_size=1"]


def test_recipe_errors_are_located() -> None:
    with pytest.raises(RecipeError, match=r"stages\[3\]\.token_mixer: .*needs a map of at least 2x2; got a 1x1 map"):
        load_recipe("transnext_micro", {"img_size": 32})
    with pytest.raises(RecipeError, match=r"stages\[0\]\.token_mixer: .*sr_ratio=32 pools the 16x16 map to 0x0 keys"):
        load_recipe("transnext_micro", {"img_size": 64, "stages[0].token_mixer.sr_ratio": 32})


def test_a_model_refuses_another_input_size(micro_64) -> None:
    with pytest.raises(ValueError, match="fixed 64x64 token grid; got a 96x96 input"):
        micro_64(torch.randn(1, 3, 96, 96))
    mixer = micro_64.stages[0].blocks[0].token_mixer
    with pytest.raises(ValueError, match="built for a fixed 16x16 token grid; got a 8x8 map"):
        mixer(torch.randn(1, 8, 8, 48))


# ------------------------------------------------------------------------------------------------ the models
MANIFEST = json.loads((Path(__file__).parent / "data" / "transnext_official_keys.json").read_text())["models"]
SIZES = {  # recipe: (dims, depths, heads, parameters of the official model, README (params_m, macs_g, top1))
    "transnext_micro": ([48, 96, 192, 384], [2, 2, 15, 2], [2, 4, 8, 16], 12_809_304, (12.8, 2.7, 82.5)),
    "transnext_tiny": ([72, 144, 288, 576], [2, 2, 15, 2], [3, 6, 12, 24], 28_258_960, (28.2, 5.7, 84.0)),
    "transnext_small": ([72, 144, 288, 576], [5, 5, 22, 5], [3, 6, 12, 24], 49_741_564, (49.7, 10.3, 84.7)),
    "transnext_base": ([96, 192, 384, 768], [5, 5, 23, 5], [4, 8, 16, 32], 89_721_496, (89.7, 18.4, 84.8)),
}
SLOW = [pytest.param(name, marks=pytest.mark.slow) for name in ("transnext_tiny", "transnext_small", "transnext_base")]


@functools.cache
def recipe_of(name: str):
    """Each recipe loaded once (a load measures the recipe's size on the meta device: seconds for these)."""
    return load_recipe(name)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def micro():
    return metablocks.build_model(recipe_of("transnext_micro")).eval()


@pytest.fixture(scope="module")
def micro_64():
    """A shallower micro at 64: 16x16, 8x8, 4x4, 2x2 maps, pools of 2x2, 2x2, 2x2."""
    return metablocks.create_model("transnext_micro", img_size=64, overrides={"stages[2].depth": 2}).eval()


def _model(name: str, micro):
    return micro if name == "transnext_micro" else metablocks.create_model(name).eval()


def test_recipes_record_the_readme() -> None:
    for name, (dims, depths, heads, _, paper) in SIZES.items():
        recipe = recipe_of(name)
        assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
        assert [s.depth for s in recipe.stages] == depths and [s.dim for s in recipe.stages] == dims
        mixers = [s.token_mixer[0] for s in recipe.stages]
        assert [m.type for m in mixers] == ["aggregated_attention"] * 3 + ["cpb_attention"]
        assert [m.sr_ratio for m in mixers[:3]] == [8, 4, 2]
        assert [m.heads(d)[0] for m, d in zip(mixers, dims)] == heads
        assert [s.channel_mixer[0].ratio for s in recipe.stages] == [8, 8, 4, 4]
        assert recipe.timm_name is None  # timm does not implement TransNeXt


@pytest.mark.slow  # four recipe loads (each measured on the meta device)
def test_384_recipes_keep_the_224_coordinate_scale() -> None:
    """The official 384 fine-tunes: TransNeXt(img_size=384, pretrain_size=224); every stage pools to 12x12 keys and
    scales its CPB coordinates by the 224 maps (56, 28, 14, 7). README: S 32.1G 86.0, B 56.3G 86.2."""
    for name, paper in (("transnext_small_384", (49.7, 32.1, 86.0)), ("transnext_base_384", (89.7, 56.3, 86.2))):
        recipe, base = recipe_of(name), recipe_of(name.removesuffix("_384"))
        assert recipe.img_size == (384, 384) and recipe.paper.resolution == 384
        assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
        assert [s.token_mixer[0].cpb_pretrain_size for s in recipe.stages] == [56, 28, 14, 7]
        strip = [s.model_copy(update={"token_mixer": [s.token_mixer[0].model_copy(update={"cpb_pretrain_size": None})]})
                 for s in recipe.stages]
        assert strip == list(base.stages)  # otherwise the 224 model


def test_cpb_pretrain_size_reaches_the_tables() -> None:
    """A 12x12 map (stage 4 at 384) pretrained at 7x7: offsets up to 11 are scaled by 8 / 6, past the pretrain span."""
    mixer = CpbAttentionConfig(num_heads=1, cpb_pretrain_size=7).build(Context(8, resolution=(12, 12)))
    assert math.isclose(mixer.relative_coords_table.max().item(), math.log2(11 * 8 / 6 + 1) / L8, rel_tol=1e-6)
    assert math.isclose(mixer.seq_length_scale, math.log(144))  # the length scale is the map's own


@pytest.mark.parametrize("name", ["transnext_micro", *SLOW])
def test_params_equal_the_official_models(name: str, micro) -> None:
    assert n_params(_model(name, micro)) == MANIFEST[name]["params"] == SIZES[name][3]


@pytest.mark.parametrize("name", ["transnext_micro", *SLOW])
def test_the_official_state_dict_loads_strictly(name: str, micro) -> None:
    """Every official key, renamed, is one of ours with the official shape, and nothing of ours is left out."""
    official = {key: torch.full(shape, 0.5) for key, shape in MANIFEST[name]["keys"]}
    model = convert_official(official, _model(name, micro))
    assert model.official_dropped == []
    assert all((v == 0.5).all() for v in model.state_dict().values())


def test_converter_is_registered_and_renames_by_hand() -> None:
    assert families()["transnext"].convert is convert_transnext and families()["transnext"].drops == ()
    pairs = {
        "patch_embed1.proj.weight": "stem.conv.weight",
        "patch_embed1.norm.bias": "stem.norm.bias",
        "patch_embed3.proj.weight": "stages.2.downsample.conv.weight",
        "patch_embed3.norm.weight": "stages.2.downsample.post_norm.weight",
        "norm2.weight": "stages.2.downsample.norm.weight",  # stage 2's final norm runs before stage 3's conv
        "norm4.bias": "head.norm.bias",
        "head.weight": "head.fc.weight",
        "block1.1.attn.learnable_tokens": "stages.0.blocks.1.token_mixer.learnable_tokens",
        "block3.14.attn.cpb_fc1.weight": "stages.2.blocks.14.token_mixer.cpb_fc1.weight",
        "block4.0.attn.qkv.weight": "stages.3.blocks.0.token_mixer.qkv.weight",
        "block2.0.mlp.dwconv.dwconv.weight": "stages.1.blocks.0.channel_mixer.dwconv.weight",
        "block2.0.mlp.fc1.bias": "stages.1.blocks.0.channel_mixer.fc1.bias",
        "block1.0.norm2.weight": "stages.0.blocks.0.norm2.weight",
    }
    assert convert_transnext({k: torch.zeros(1) for k in pairs}).keys() == set(pairs.values())
    assert list(convert_transnext({k: torch.zeros(1) for k in pairs})) == list(pairs.values())


def test_norms_as_the_official_code() -> None:
    """LayerNorm eps 1e-6 (norm_layer) in the blocks, the stage-end norms and the head; 1e-5 (nn.LayerNorm's default)
    in the patch embeddings and the pooled keys' norm."""
    recipe = recipe_of("transnext_micro")
    assert recipe.stem.norm.eps == 1e-5 and recipe.stages[1].downsample.post_norm.eps == 1e-5
    assert recipe.stages[1].downsample.norm.eps == 1e-6 and recipe.stages[1].downsample.norm_first
    assert recipe.stages[0].norm.eps == 1e-6 and recipe.head.norm.eps == 1e-6 and recipe.head.norm_first
    assert (recipe.stem.kernel_size, recipe.stem.stride, recipe.stem.padding) == (7, 4, 3)


def test_forward_backward_at_a_small_size(micro_64) -> None:
    """Every parameter gets a gradient."""
    model = micro_64.train()
    try:
        out = model(torch.randn(2, 3, 64, 64))
        assert out.shape == (2, 1000)
        out.square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SIZES, "transnext_small_384", "transnext_base_384"])
def test_macs_match_the_readme(name: str) -> None:
    """The README's GFLOPs are MACs: ours count 2.65 / 5.71 / 10.28 / 18.28 at 224 (README 2.7 / 5.7 / 10.3 / 18.4)
    and 31.98 / 56.13 at 384 (README 32.1 / 56.3): the conv, linear and matmul MACs; the 3x3 local attention's
    elementwise products are not counted (fvcore counts no elementwise op either)."""
    from metablocks.analysis import count_macs

    recipe = load_recipe(name)
    size = recipe.paper.resolution
    macs = count_macs(metablocks.create_model(name).eval(), (3, size, size)).total / 1e9
    assert abs(macs / recipe.paper.macs_g - 1) <= 0.03


# ------------------------------------------------------------------------------- against the official code, if present
OFFICIAL = os.environ.get("TRANSNEXT_OFFICIAL")


def official_module():
    """classification/transnext.py of the official checkout, with pkg_resources (which it asks whether the CUDA
    extension is installed) stubbed to say no: the pure-PyTorch attention_native is used."""
    import importlib

    stub = types.ModuleType("pkg_resources")
    stub.DistributionNotFound = type("DistributionNotFound", (Exception,), {})

    def get_distribution(name: str):
        raise stub.DistributionNotFound(name)

    stub.get_distribution = get_distribution
    sys.modules.setdefault("pkg_resources", stub)
    sys.path.insert(0, OFFICIAL)
    try:
        return importlib.import_module("transnext")
    finally:
        sys.path.remove(OFFICIAL)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Norm affines, biases, temperatures, query embeddings, learnable tokens/bias and local position biases moved
    off their init, so each one matters."""
    g = torch.Generator().manual_seed(0)
    special = ("temperature", "query_embedding", "learnable", "relative_pos_bias_local")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or any(s in name for s in special):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.skipif(not OFFICIAL, reason="set TRANSNEXT_OFFICIAL to the classification/ folder of DaiShiResearch/TransNeXt")
@pytest.mark.parametrize("name", ["transnext_micro", *SLOW])
def test_logits_equal_the_official_model(name: str) -> None:
    theirs = perturbed(getattr(official_module(), name)())
    assert [[k, list(v.shape)] for k, v in theirs.state_dict().items()] == MANIFEST[name]["keys"]
    ours = convert_official(theirs.state_dict(), metablocks.create_model(name))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max().item() > 0.5 and (got - expected).abs().max().item() <= 1e-5
