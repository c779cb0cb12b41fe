"""Next-ViT S/B/L as recipes: equal to timm (params, strict weight loading, logits with perturbed weights at 224 and
another size), timm's per-block widths and drop-path rates; the components (MHCA, E-MHSA, the per-block patch
embedding) equal to timm's modules with the same weights, their checks' error texts, and the conv_stack stem that sets
its own width."""
import pytest
import torch

import metablocks
from metablocks.components.channel_mixers.patch_embed import PatchEmbed
from metablocks.interop.families.nextvit import nextvit_key
from metablocks.interop.timm import load_timm_state_dict
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context, get, load_plugins
from zoo_timm import n_params, perturb

timm = pytest.importorskip("timm")
from timm.models import nextvit as timm_nextvit  # noqa: E402

load_plugins()


PARAMS = {"nextvit_small": 31_763_368, "nextvit_base": 44_818_856, "nextvit_large": 57_874_344}  # timm's counts


def component(kind: str, name: str, **fields):
    return get(kind, name)(**fields)


def equal_pair(name: str, **fields) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our model and timm's, timm's perturbed (norm affines, biases, BN statistics) and loaded into ours strictly."""
    ours, theirs = metablocks.create_model(name, **fields).eval(), timm.create_model(name, **fields).eval()
    perturb(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    return ours, theirs


@pytest.fixture(scope="module")
def small() -> tuple[torch.nn.Module, torch.nn.Module]:
    return equal_pair("nextvit_small", drop_path_rate=0.1)  # drop path: for the rates test; nothing in eval


def assert_equal_logits(ours: torch.nn.Module, theirs: torch.nn.Module, name: str, sizes: tuple[int, ...]) -> None:
    assert ours.recipe.timm_name == name
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.randn(1, 3, size, size, generator=gen)
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        assert expected.abs().max().item() > 0.1
        assert (got - expected).abs().max().item() <= 1e-5, size


def test_small_equal_to_timm(small) -> None:
    assert_equal_logits(*small, "nextvit_small", (224, 160))


@pytest.mark.slow
@pytest.mark.parametrize("name, sizes", [("nextvit_base", (224, 256)), ("nextvit_large", (224, 200))])
def test_equal_to_timm(name: str, sizes: tuple[int, ...]) -> None:
    """200: stage 2 is 25x25, so E-MHSA's runs of 16 tokens leave a remainder (dropped by both)."""
    assert_equal_logits(*equal_pair(name), name, sizes)


def test_widths_blocks_and_drop_path_as_timm(small) -> None:
    """Per-block widths, NCB/NTB pattern, the NTB's C1 = make_divisible(0.75 C, 32) split, and the drop-path rates
    (timm's calculate_drop_path_rates(stagewise=True): one linspace over all blocks, split per stage)."""
    ours, theirs = small
    assert [[b.dim for b in s.blocks] for s in ours.stages] == theirs.stage_out_chs
    kinds = [["ntb" if hasattr(b, "projection") else "ncb" for b in s.blocks] for s in ours.stages]
    assert kinds == [["ntb" if type(b).__name__ == "NextTransformerBlock" else "ncb" for b in s.blocks]
                     for s in theirs.stages]
    ntb = ours.stages[3].blocks[2]
    assert (ntb.norm1.num_features, ntb.projection.conv.out_channels, ntb.norm2.num_features) == (768, 256, 1024)
    assert [s.blocks[0].patch_embed.conv.stride == (1, 1) and isinstance(s.blocks[0].patch_embed.pool, torch.nn.AvgPool2d)
            for s in ours.stages] == [False, True, True, True]
    assert ours.stages[0].blocks[0].patch_embed.conv.in_channels == 64  # the stem's 64 -> 96 in stage 0's first block
    for stage_ours, stage_theirs in zip(ours.stages, theirs.stages):
        for a, b in zip(stage_ours.blocks, stage_theirs.blocks):
            if hasattr(b, "e_mhsa"):
                assert (a.drop_path2.p, a.mhca.drop_path1.p, a.drop_path4.p) == pytest.approx(
                    (b.mhsa_drop_path.drop_prob, b.mhca_drop_path.drop_prob, b.mlp_drop_path.drop_prob))
            elif b.attn_drop_path.drop_prob > 0:
                assert (a.drop_path2.p, a.drop_path3.p) == pytest.approx(
                    (b.attn_drop_path.drop_prob, b.mlp_drop_path.drop_prob))
    assert [i["num_chs"] for i in ours.feature_info] == [i["num_chs"] for i in theirs.feature_info] == [96, 256, 512, 1024]
    assert ours.pretrained_cfg["crop_pct"] == theirs.pretrained_cfg["crop_pct"] == 0.95


def test_timm_key_mapping() -> None:
    ntb = {"stages.1.blocks.3"}
    assert nextvit_key("stem.3.norm.running_var", ntb) == "stem.layers.3.norm.running_var"
    assert nextvit_key("stages.0.blocks.0.patch_embed.conv.weight", ntb) == "stages.0.blocks.0.patch_embed.conv.weight"
    assert nextvit_key("stages.0.blocks.1.mhca.group_conv3x3.weight", ntb) == "stages.0.blocks.1.token_mixer.group_conv3x3.weight"
    assert nextvit_key("stages.0.blocks.1.norm.bias", ntb) == "stages.0.blocks.1.norm1.bias"
    assert nextvit_key("stages.1.blocks.3.e_mhsa.norm.bias", ntb) == "stages.1.blocks.3.token_mixer.norm.bias"
    assert nextvit_key("stages.1.blocks.3.mhca.projection.weight", ntb) == "stages.1.blocks.3.mhca.token_mixer.projection.weight"
    assert nextvit_key("stages.1.blocks.3.norm2.weight", ntb) == "stages.1.blocks.3.norm2.weight"
    assert nextvit_key("norm.running_mean", ntb) == "head.norm.running_mean"
    assert nextvit_key("head.fc.weight", ntb) == "head.fc.weight"


def test_recipe_mistakes_are_located() -> None:
    with pytest.raises(RecipeError) as err:  # stage 1 is 2x2: E-MHSA's runs of sr^2 = 16 tokens do not fit
        metablocks.load_recipe("nextvit_small", {"img_size": 16})
    assert "stages[1].blocks.ntb.token_mixer: token_mixer 'e_mhsa': sr_ratio=4 pools runs of 16 tokens, more than the 2x2 " \
           "map has" in str(err.value)
    with pytest.raises(RecipeError) as err:  # 250 wide: C1 = 192 for attention, 58 left for MHCA's 32-wide groups
        metablocks.load_recipe("nextvit_small", {"stages[1].dim": [192, 192, 192, 250]})
    assert "stages[1].blocks.ntb.slots.mhca.token_mixer: token_mixer 'mhca': dim=58 is not divisible by head_dim=32" \
        in str(err.value)


@pytest.mark.parametrize("dim", [64, 96, 256])
def test_mhca_equals_timm_conv_attention(dim: int) -> None:
    theirs = timm_nextvit.ConvAttention(dim, head_dim=32).eval()
    perturb(theirs)
    ours = component("token_mixer", "mhca").build(Context(dim)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.group_conv3x3.groups == dim // 32
    x = torch.randn(2, dim, 9, 11)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("dim, sr_ratio, size", [(192, 4, (28, 28)), (384, 2, (14, 14)), (768, 1, (7, 7)),
                                                 (96, 8, (13, 11)), (64, 2, (5, 7))])
def test_e_mhsa_equals_timm_efficient_attention(dim: int, sr_ratio: int, size: tuple[int, int]) -> None:
    """(13, 11) and (5, 7): H*W not a multiple of sr_ratio^2; the pooled runs drop the remainder, as timm's AvgPool1d."""
    theirs = timm_nextvit.EfficientAttention(dim, head_dim=32, sr_ratio=sr_ratio).eval()
    perturb(theirs)
    ours = component("token_mixer", "e_mhsa", sr_ratio=sr_ratio).build(Context(dim)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, dim, *size)
    with torch.no_grad():
        expected = theirs(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)  # timm runs on (B, N, C)
        assert (ours(x) - expected).abs().max().item() <= 1e-5


def test_e_mhsa_keys_without_spatial_reduction() -> None:
    keys = component("token_mixer", "e_mhsa").build(Context(64)).state_dict()
    assert sorted(keys) == sorted(f"{p}.{w}" for p in ("q", "k", "v", "proj") for w in ("weight", "bias"))


@pytest.mark.parametrize("c_in, c_out, stride, size", [(64, 96, 1, (56, 56)), (96, 192, 2, (56, 56)),
                                                       (96, 96, 1, (8, 8)), (192, 256, 2, (7, 9))])
def test_patch_embed_equals_timm(c_in: int, c_out: int, stride: int, size: tuple[int, int]) -> None:
    theirs = timm_nextvit.PatchEmbed(c_in, c_out, stride=stride).eval()
    perturb(theirs)
    ours = PatchEmbed(c_in, out_dim=c_out, stride=stride, norm=component("norm", "batchnorm")).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, c_in, *size)
    with torch.no_grad():
        out = ours(x)
        assert (out - theirs(x)).abs().max().item() <= 1e-6
    assert out.shape[-2:] == tuple(-(-s // stride) for s in size)  # ceil(H / s) x ceil(W / s)


def test_patch_embed_is_the_identity_without_a_change() -> None:
    module = PatchEmbed(96, out_dim=96, stride=1, norm=component("norm", "batchnorm"))
    assert len(module.state_dict()) == 0
    x = torch.randn(1, 96, 4, 4)
    assert module(x) is x


def test_mhca_checks() -> None:
    assert component("token_mixer", "mhca").check(Context(80)) == [
        "dim=80 is not divisible by head_dim=32 (the grouped conv has one group per head)"]
    assert component("token_mixer", "mhca", kernel_size=4).check(Context(64)) == [
        "kernel_size must be odd to keep the map's size, got 4"]


def test_e_mhsa_checks() -> None:
    assert component("token_mixer", "e_mhsa").check(Context(80)) == ["dim=80 is not divisible by head_dim=32"]
    assert component("token_mixer", "e_mhsa", num_heads=3, head_dim=32).check(Context(64)) == [
        "num_heads=3 x head_dim=32 must equal dim=64"]
    assert component("token_mixer", "e_mhsa", sr_ratio=4).check(Context(64, resolution=(3, 5))) == [
        "sr_ratio=4 pools runs of 16 tokens, more than the 3x5 map has"]
    assert component("token_mixer", "e_mhsa", sr_ratio=4).check(Context(64, resolution=(4, 4))) == []


def test_conv_stack_with_its_own_channels() -> None:
    """Next-ViT's stem: four 3x3 conv-BN-ReLU layers of 64, 32, 64, 64 channels (first and last strided), whatever the
    first stage's width; a layer count that does not match, or widths given twice, is an error."""
    layer = {"bias": False, "norm": "batchnorm", "act": "relu"}
    stem = component("stem", "conv_stack", channels=[64, 32, 64, 64],
                     layers=[{**layer, "stride": 2}, layer, layer, {**layer, "stride": 2}])
    assert stem.out_dim(96) == 64
    assert stem.check(Context(3, out_dim=64, resolution=(224, 224))) == []
    assert stem.out_resolution((224, 224)) == (56, 56)
    assert [m.conv.out_channels for m in stem.build(Context(3, out_dim=64)).layers] == [64, 32, 64, 64]
    assert "channels" not in component("stem", "conv_stack", layers=[layer]).dump()  # model_ids of older recipes kept
    short = component("stem", "conv_stack", channels=[64, 64], layers=[layer])
    assert short.check(Context(3, out_dim=64)) == ["channels gives 2 widths for 1 layers (one per layer)"]
    both = component("stem", "conv_stack", channels=[64], layers=[{**layer, "width": 0.5}])
    assert both.check(Context(3, out_dim=64)) == [
        "give the layers' widths either as channels or as each layer's width, not both"]
