"""CrossFormer T/S/B/L (official code: cheerss/CrossFormer models/crossformer.py as released for CrossFormer, commit
f20000d, and configs/*_patch4_group7_224.yaml; timm has no CrossFormer).

The official code is not available here, so what was measured against it is held as data: the parameter counts of
the official models and the key/shape manifest of their state_dicts (tests/data/crossformer_official_keys.json,
written once from the official code, with the official ``flops()``), which the converter must map onto our state_dict
exactly. Outside the repository the official models' logits were compared with ours at 224 (the official random
init with every 1-D parameter perturbed, loaded into ours through the registered converter): max abs diff T 4.2e-7,
S 5.4e-7, B 5.4e-7, L 8.3e-7 (logits up to 1.6, 2.1, 1.8, 4.5).
The grouping (which tokens attend to which), the position bias MLP and the cross-scale embedding are checked by
hand on tiny tensors."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.components.common.dynamic_position_bias import DynamicPosBias, offset_index, relative_offsets
from metablocks.components.stems.cross_scale_conv import CrossScaleConvDownsample, CrossScaleConvStem, split_widths
from metablocks.components.token_mixers.lsda_attention import LSDAttentionConfig, from_groups, to_groups
from metablocks.interop.official import OfficialWeightsError, convert_official, families
from metablocks.interop.official.crossformer import convert_crossformer, load_crossformer
from metablocks.recipe.errors import RecipeError
from metablocks.recipe.loader import load_recipe
from metablocks.registry import Context


# ------------------------------------------------------------------------------------------------ the grouping
def _grid(height: int, width: int) -> torch.Tensor:
    """(1, H, W, 1) map holding each token's row-major index."""
    return torch.arange(float(height * width)).reshape(1, height, width, 1)


def test_short_distance_groups_by_hand() -> None:
    """SDA on a 4x4 map with G = 2: the four 2x2 windows of adjacent tokens, row-major."""
    groups = to_groups(_grid(4, 4), regions=(2, 2), interval=(1, 1), group=2)[..., 0]
    assert groups.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_long_distance_groups_by_hand() -> None:
    """LDA on a 4x4 map with G = 2, I = 2: each group takes the tokens 2 apart (offsets (0,0), (0,1), (1,0), (1,1))."""
    groups = to_groups(_grid(4, 4), regions=(1, 1), interval=(2, 2), group=2)[..., 0]
    assert groups.tolist() == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]


def test_long_distance_groups_inside_regions_by_hand() -> None:
    """An 8x4 map with G = 2, I = 2: two 4x4 regions stacked; a group never leaves its region."""
    groups = to_groups(_grid(8, 4), regions=(2, 1), interval=(2, 2), group=2)[..., 0]
    assert groups.tolist() == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15],
                               [16, 18, 24, 26], [17, 19, 25, 27], [20, 22, 28, 30], [21, 23, 29, 31]]


def test_ungrouping_inverts_grouping() -> None:
    x = torch.randn(2, 12, 18, 5)
    for regions, interval in [((4, 6), (1, 1)), ((1, 1), (4, 6)), ((2, 1), (2, 6))]:  # H = Rh G Ih
        assert torch.equal(from_groups(to_groups(x, regions, interval, 3), regions, interval, 3), x)


def _attends(mixer: torch.nn.Module, height: int, width: int, token: int) -> set[int]:
    """The tokens whose input reaches ``token``'s output (whom it attends to): where the gradient is not zero."""
    torch.manual_seed(0)
    x = torch.randn(1, height, width, mixer.qkv.in_features, requires_grad=True)
    mixer(x)[0, token // width, token % width].sum().backward()
    return set((x.grad[0].abs().sum(-1).flatten() > 0).nonzero().flatten().tolist())


def test_which_tokens_attend_to_which() -> None:
    """8x8 map, G = 2: SDA tokens see their 2x2 window; LDA (I = H/G = 4) tokens the four tokens 4 apart."""
    short = LSDAttentionConfig(distance="short", group_size=2, head_dim=16).build(Context(32, resolution=(8, 8)))
    long = LSDAttentionConfig(distance="long", group_size=2, head_dim=16).build(Context(32, resolution=(8, 8)))
    assert long.interval == (4, 4) and short.interval == (1, 1)
    assert _attends(short.eval(), 8, 8, 9) == {0, 1, 8, 9}  # token (1, 1)
    assert _attends(long.eval(), 8, 8, 9) == {9, 13, 41, 45}  # (1, 1), (1, 5), (5, 1), (5, 5)
    explicit = LSDAttentionConfig(distance="long", group_size=2, interval=2, head_dim=16).build(
        Context(32, resolution=(8, 8))).eval()  # regions of 4x4: (1, 1) with (1, 3), (3, 1), (3, 3)
    assert _attends(explicit, 8, 8, 9) == {9, 11, 25, 27}


def test_a_map_no_larger_than_the_group_is_one_group() -> None:
    """The official fallback: min(H, W) <= G attends the map as groups of min(H, W), LDA included."""
    config = LSDAttentionConfig(distance="long", group_size=7)
    assert config.grouping((7, 7)) == (7, (1, 1)) and config.grouping((4, 4)) == (4, (1, 1))
    assert config.grouping((56, 56)) == (7, (8, 8)) and config.grouping((14, 28)) == (7, (2, 4))
    assert LSDAttentionConfig(distance="long", group_size=7, interval=2).grouping((28, 28)) == (7, (2, 2))
    mixer = config.build(Context(64, resolution=(4, 4))).eval()
    assert mixer.group == 4 and mixer.pos.index.numel() == 16 * 16
    assert all(_attends(mixer, 4, 4, t) == set(range(16)) for t in (0, 5, 15))


# ------------------------------------------------------------------------------------------------ the position bias
def test_offsets_and_index_by_hand() -> None:
    """G = 2: offsets (dy, dx) dy-major over [-1, 1]^2; tokens (0,0), (0,1), (1,0), (1,1): index (dy+1)*3 + (dx+1)."""
    assert relative_offsets(2).tolist() == [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0],
                                            [1, 1]]
    assert offset_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]


@pytest.mark.parametrize("residual", [False, True])
def test_dynamic_position_bias_by_formula(residual: bool) -> None:
    torch.manual_seed(0)
    dpb = DynamicPosBias(4, 3, group=2, residual=residual)
    for p in dpb.parameters():
        torch.nn.init.normal_(p)
    d = relative_offsets(2)

    def layer(seq, p):
        return seq[2](torch.relu(F.layer_norm(p, (4,), seq[0].weight, seq[0].bias)))

    p = dpb.pos_proj(d)
    if residual:
        p = p + layer(dpb.pos1, p)
        p = p + layer(dpb.pos2, p)
        table = layer(dpb.pos3, p)
    else:
        table = layer(dpb.pos3, layer(dpb.pos2, layer(dpb.pos1, p)))
    bias = dpb()
    assert bias.shape == (1, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(bias[0, :, 1, 2], table[2], atol=1e-6)  # token (0,1) -> (1,0): offset (-1, 1)
        assert torch.allclose(bias[0].permute(1, 2, 0).flatten(0, 1), table[offset_index(2).flatten()], atol=1e-6)


def test_one_group_equals_attention_by_formula() -> None:
    """A 2x2 map with G = 2 (one group): proj(softmax(q k^T / sqrt(d) + B) v) per head."""
    torch.manual_seed(0)
    mixer = LSDAttentionConfig(group_size=2, num_heads=2).build(Context(32, resolution=(2, 2))).eval()
    x = torch.randn(3, 2, 2, 32)
    q, k, v = mixer.qkv(x.flatten(1, 2)).split(32, -1)
    bias = mixer.pos()[0]
    heads = [slice(0, 16), slice(16, 32)]
    out = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 4.0 + bias[h], -1) @ v[..., s]
                     for h, s in enumerate(heads)], -1)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mixer.proj(out).reshape(3, 2, 2, 32), atol=1e-5)


def test_no_position_bias() -> None:
    mixer = LSDAttentionConfig(group_size=2, head_dim=16, dpb=None).build(Context(32, resolution=(4, 4)))
    assert mixer.pos is None and mixer(torch.randn(1, 4, 4, 32)).shape == (1, 4, 4, 32)


def test_lsda_checks() -> None:
    sda, lda = LSDAttentionConfig(head_dim=32), LSDAttentionConfig(distance="long", head_dim=32)
    assert sda.check(Context(64, resolution=(56, 56), stage=0)) == lda.check(Context(64, resolution=(56, 56))) == []
    assert sda.check(Context(64, resolution=(40, 40), stage=0)) == [
        "group_size=7 does not divide the 40x40 map of stage 0: short distance attention cuts it into 7x7 groups, so "
        "its sides must be multiples of 7 (a fixed input resolution)"]
    assert LSDAttentionConfig(distance="long", interval=8).check(Context(64, resolution=(28, 28), stage=1)) == [
        "interval=8 x group_size=7 = 56 does not divide the 28x28 map of stage 1: long distance attention cuts it "
        "into 56x56 regions, so its sides must be multiples of 56 (a fixed input resolution)"]
    assert sda.check(Context(64, resolution=(5, 6))) == [
        "the 5x6 map is no larger than group_size=7, so it is attended as 5x5 groups, which must divide it"]
    assert LSDAttentionConfig(num_heads=3).check(Context(64, resolution=(7, 7))) == [
        "dim=64 is not divisible by num_heads=3"]
    assert sda.check(Context(64)) == ["lsda_attention needs the feature map size (its groups are cut for it)"]


# ------------------------------------------------------------------------------------------------ cross-scale embedding
def test_split_widths() -> None:
    assert split_widths(64, 4) == [32, 16, 8, 8] and split_widths(96, 4) == [48, 24, 12, 12]
    assert split_widths(192, 2) == [96, 96] and split_widths(10, 1) == [10]


def test_cross_scale_stem_concatenates_its_convs() -> None:
    """Stem kernels 4, 8, 16, 32 at stride 4, padding (k - 4) / 2: one 8x8 grid, D/2, D/4, D/8, D/8 channels, then
    LayerNorm over the concatenation."""
    torch.manual_seed(0)
    stem = CrossScaleConvStem.Config(norm={"type": "layernorm", "eps": 1e-5}).build(Context(3, out_dim=16)).eval()
    x = torch.randn(2, 3, 32, 32)
    parts = [F.conv2d(x, p.weight, p.bias, stride=4, padding=pad) for p, pad in zip(stem.projs, [0, 2, 6, 14])]
    assert [t.shape[1] for t in parts] == [8, 4, 2, 2] and all(t.shape[-2:] == (8, 8) for t in parts)
    expected = F.layer_norm(torch.cat(parts, 1).permute(0, 2, 3, 1), (16,), stem.norm.weight, stem.norm.bias, 1e-5)
    with torch.no_grad():
        assert torch.allclose(stem(x), expected.permute(0, 3, 1, 2), atol=1e-5)


def test_cross_scale_merging_normalizes_its_input() -> None:
    """Merging: LayerNorm of the input, then kernels 2 (padding 0) and 4 (padding 1) at stride 2, C and C of 2C."""
    torch.manual_seed(0)
    merge = CrossScaleConvDownsample.Config(kernels=[2, 4], norm_first=True).build(Context(8, out_dim=16)).eval()
    for p in merge.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(1, 8, 6, 6)
    normed = F.layer_norm(x.permute(0, 2, 3, 1), (8,), merge.norm.weight, merge.norm.bias, 1e-6).permute(0, 3, 1, 2)
    a = F.conv2d(normed, merge.projs[0].weight, merge.projs[0].bias, stride=2)
    b = F.conv2d(normed, merge.projs[1].weight, merge.projs[1].bias, stride=2, padding=1)
    with torch.no_grad():
        assert torch.allclose(merge(x), torch.cat([a, b], 1), atol=1e-5)
    assert merge(x).shape == (1, 16, 3, 3)


def test_cross_scale_conv_checks() -> None:
    config = CrossScaleConvDownsample.Config(kernels=[2, 3])
    assert config.check(Context(8, out_dim=16, resolution=(7, 8))) == [
        "kernel 3 must be at least the stride 2 with (k - 2) even, so that its padding (k - 2) / 2 centres it on the "
        "stride-2 grid",
        "a 7x8 map does not divide into 2x2 patches: its sides must be multiples of the stride 2"]
    assert CrossScaleConvStem.Config().check(Context(3, out_dim=36)) == [
        "out_dim=36 does not split over 4 kernels: kernel i gets out_dim / 2^(i+1) channels (the last as many as the "
        "one before), so out_dim must be a multiple of 8"]


# ------------------------------------------------------------------------------------------------ the whole models
MANIFEST = json.loads((Path(__file__).parent / "data" / "crossformer_official_keys.json").read_text())["models"]
SIZES = {  # recipe: (embed dims, depths, heads, parameters of the official model, README (params_m, macs_g, top1))
    "crossformer_tiny": ([64, 128, 256, 512], [1, 1, 8, 6], [2, 4, 8, 16], 27_776_794, (27.8, 2.9, 81.5)),
    "crossformer_small": ([96, 192, 384, 768], [2, 2, 6, 2], [3, 6, 12, 24], 30_657_394, (30.7, 4.9, 82.5)),
    "crossformer_base": ([96, 192, 384, 768], [2, 2, 18, 2], [3, 6, 12, 24], 51_971_554, (52.0, 9.2, 83.4)),
    "crossformer_large": ([128, 256, 512, 1024], [2, 2, 18, 2], [4, 8, 16, 32], 91_971_184, (92.0, 16.1, 84.0)),
}
SLOW = [pytest.param(name, marks=pytest.mark.slow) for name in list(SIZES)[1:]]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def crossformer_tiny():
    return metablocks.create_model("crossformer_tiny").eval()


def _model(name: str, tiny):
    return tiny if name == "crossformer_tiny" else metablocks.create_model(name).eval()


@pytest.mark.parametrize("name", ["crossformer_tiny", *SLOW])
def test_recipe_records_the_readme(name: str) -> None:
    dims, depths, _, _, paper = SIZES[name]
    recipe = load_recipe(name)
    assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
    assert [s.depth for s in recipe.stages] == depths and [s.dim for s in recipe.stages] == dims
    assert recipe.timm_name is None  # timm does not implement CrossFormer


@pytest.mark.parametrize("name", ["crossformer_tiny", *SLOW])
def test_params_equal_the_official_models(name: str, crossformer_tiny) -> None:
    model = _model(name, crossformer_tiny)
    assert n_params(model) == MANIFEST[name]["params"] == SIZES[name][3]
    assert round(SIZES[name][3] / 1e6, 1) == SIZES[name][4][0]  # the README's 27.8M, 30.7M, 52.0M, 92.0M
    heads = [stage.blocks[0].token_mixer.num_heads for stage in model.stages]
    assert heads == SIZES[name][2]


@pytest.mark.parametrize("name", ["crossformer_tiny", *SLOW])
def test_the_official_state_dict_loads_strictly(name: str, crossformer_tiny) -> None:
    """Every official key of the manifest is placed (the two index buffers per block dropped and reported)."""
    official = {key: torch.randn(shape) for key, shape in MANIFEST[name]["keys"]}
    model = convert_official(official, _model(name, crossformer_tiny))  # the family from the recipe's folder
    depth = sum(SIZES[name][1])
    assert len(model.official_dropped) == 2 * depth
    assert all(k.endswith((".attn.biases", ".attn.relative_position_index")) for k in model.official_dropped)
    ours = model.state_dict()
    assert len(ours) == len(official) - 2 * depth
    assert torch.equal(ours["stages.1.downsample.projs.1.weight"], official["layers.0.downsample.reductions.1.weight"])
    assert torch.equal(ours["head.norm.bias"], official["norm.bias"])


def test_official_buffers_equal_ours(crossformer_tiny) -> None:
    """What the converter drops is what we rebuild: the released code's offsets and index for G = 7."""
    mixer = crossformer_tiny.stages[2].blocks[1].token_mixer
    assert mixer.pos.offsets.shape == (169, 2) and mixer.pos.offsets[0].tolist() == [-6, -6]
    assert mixer.pos.index.reshape(49, 49)[0, :3].tolist() == [84, 83, 82]  # (0,0) -> (0,0), (0,1), (0,2)
    assert [k for k, _ in MANIFEST["crossformer_tiny"]["keys"] if k.startswith("layers.2.blocks.1.attn.")][:2] == [
        "layers.2.blocks.1.attn.biases", "layers.2.blocks.1.attn.relative_position_index"]


def test_converter_names_by_hand() -> None:
    pairs = {
        "patch_embed.projs.3.weight": "stem.projs.3.weight",
        "patch_embed.norm.bias": "stem.norm.bias",
        "layers.0.blocks.0.norm1.weight": "stages.0.blocks.0.norm1.weight",
        "layers.2.blocks.5.attn.qkv.weight": "stages.2.blocks.5.token_mixer.qkv.weight",
        "layers.2.blocks.5.attn.pos.pos3.2.bias": "stages.2.blocks.5.token_mixer.pos.pos3.2.bias",
        "layers.3.blocks.1.mlp.fc2.weight": "stages.3.blocks.1.channel_mixer.fc2.weight",
        "layers.0.downsample.norm.weight": "stages.1.downsample.norm.weight",
        "layers.2.downsample.reductions.0.bias": "stages.3.downsample.projs.0.bias",
        "norm.weight": "head.norm.weight",
        "head.bias": "head.fc.bias",
    }
    assert list(convert_crossformer({k: torch.zeros(1) for k in pairs})) == list(pairs.values())
    assert families()["crossformer"].drops == (r"\.attn\.biases$", r"\.attn\.relative_position_index$")


def test_load_refuses_a_state_dict_that_does_not_fit(crossformer_tiny) -> None:
    official = {key: torch.zeros(shape) for key, shape in MANIFEST["crossformer_small"]["keys"]}
    with pytest.raises(OfficialWeightsError, match="the official crossformer weights does not fit"):
        load_crossformer(crossformer_tiny, official)


def test_block_structure(crossformer_tiny) -> None:
    """SDA, LDA alternating from SDA; LDA intervals 8, 4, 2 then the stage-4 fallback; LayerNorm eps 1e-5."""
    model = metablocks.create_model("crossformer_small", overrides={"stages[2].depth": 2}, drop_path_rate=0.2)
    intervals = [[b.token_mixer.interval for b in stage.blocks] for stage in model.stages]
    assert intervals == [[(1, 1), (8, 8)], [(1, 1), (4, 4)], [(1, 1), (2, 2)], [(1, 1), (1, 1)]]
    assert [b.token_mixer.group for b in model.stages[3].blocks] == [7, 7]
    block = model.stages[1].blocks[1]
    assert block.norm1.eps == 1e-5 and block.channel_mixer.fc1.out_features == 4 * 192
    assert block.drop_path1.p == block.drop_path2.p > 0
    assert [p.kernel_size for p in crossformer_tiny.stem.projs] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    assert [p.padding for p in crossformer_tiny.stages[1].downsample.projs] == [(0, 0), (1, 1)]
    assert crossformer_tiny.head.norm_first and crossformer_tiny.fixed_resolution


@pytest.mark.parametrize("name", ["crossformer_tiny", *SLOW])
def test_macs_match_the_readme(name: str, crossformer_tiny) -> None:
    """Ours 2.870 / 4.925 / 9.188 / 16.146 GMACs; the official flops() 2.858 / 4.910 / 9.165 / 16.116 (it counts
    the norms as one op per element and the position bias MLP per token); README 2.9 / 4.9 / 9.2 / 16.1."""
    from metablocks.analysis import count_macs

    gmacs = count_macs(_model(name, crossformer_tiny)).total / 1e9
    ours = {"crossformer_tiny": 2.870, "crossformer_small": 4.925, "crossformer_base": 9.188,
            "crossformer_large": 16.146}[name]
    assert abs(gmacs - ours) < 0.001
    assert abs(gmacs - MANIFEST[name]["flops_official"] / 1e9) / gmacs < 0.005
    assert abs(gmacs - SIZES[name][4][1]) / SIZES[name][4][1] < 0.02


NARROW = {"stages[2:].depth": 2, "stages[0].dim": 32, "stages[1].dim": 64, "stages[2].dim": 128, "stages[3].dim": 256}


def test_forward_backward() -> None:
    model = metablocks.create_model("crossformer_tiny", num_classes=10, overrides=NARROW).train()
    out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="mixes over a fixed 224x224 token grid"):
        model(torch.randn(1, 3, 448, 448))


def test_another_resolution() -> None:
    """448: maps 112, 56, 28, 14 -- LDA intervals H/G = 16, 8, 4, 2 (the released code's rule), every map grouped."""
    model = metablocks.create_model("crossformer_tiny", img_size=448, overrides=NARROW).eval()
    assert [s.blocks[-1].token_mixer.interval for s in model.stages] == [(1, 1), (1, 1), (4, 4), (2, 2)]
    assert model.stages[0].blocks[0].token_mixer.regions == (16, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 448, 448)).shape == (1, 1000)


def test_a_map_that_groups_do_not_divide_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("crossformer_tiny", {"img_size": 160})  # maps 40, 20, 10, 5
    message = str(err.value)
    assert "group_size=7 does not divide the 40x40 map of stage 0" in message
    assert "group_size=7 does not divide the 10x10 map of stage 2: long distance attention" in message
    assert "crossformer" in message and "stages[2].token_mixer" in message
    with pytest.raises(RecipeError, match="a 150x150 map does not divide into 4x4 patches"):
        load_recipe("crossformer_tiny", {"img_size": 150})


def test_resolved_dump_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe("crossformer_small")
    (tmp_path / "resolved.yaml").write_text(recipe.to_yaml())
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again.model_id == recipe.model_id and again.dump() == recipe.dump()
    assert [m.distance for m in recipe.stages[0].token_mixer] == ["short", "long"]
