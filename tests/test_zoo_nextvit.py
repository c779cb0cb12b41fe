"""Next-ViT S/B/L: the components (MHCA, E-MHSA, the per-block patch embedding) equal to timm's modules with the same
(perturbed) weights, their checks' error texts, and the conv_stack stem that sets its own width."""
import pytest
import torch

import metablocks
from metablocks.components.channel_mixers.patch_embed import PatchEmbed
from metablocks.registry import Context, get, load_plugins
from zoo_timm import perturb

timm = pytest.importorskip("timm")
from timm.models import nextvit as timm_nextvit  # noqa: E402

load_plugins()


def component(kind: str, name: str, **fields):
    return get(kind, name)(**fields)


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
