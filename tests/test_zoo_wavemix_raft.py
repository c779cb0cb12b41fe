"""WaveMix-192/16 (the official ImageNet config) and RaftMLP-S/M/L as recipes: parameter counts against the official
layer lists by formula and the papers' tables, MACs, output shapes, other resolutions and their errors, and the
multi-scale patch embedding against the official unfold + linear."""
import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.analysis import count_macs, count_params
from metablocks.commands.zoo import params_ok
from metablocks.components.stems.cross_scale_embed import CrossScaleEmbed
from metablocks.recipe.errors import RecipeError


def conv(c_in: int, c_out: int, k: int = 1) -> int:
    return c_in * c_out * k * k + c_out  # every WaveMix conv has a bias


def linear(f_in: int, f_out: int) -> int:
    return f_in * f_out + f_out


def official_wavemix_params(num_classes: int = 1000, depth: int = 16, mult: int = 2, ff_channel: int = 192,
                            final_dim: int = 192) -> int:
    """wavemix.classification.WaveMix(level=3, initial_conv='pachify', patch_size=4): stem, 16 Level3Waveblocks, pool->fc."""
    d = final_dim
    stem = conv(3, d // 4, 3) + conv(d // 4, d // 2, 3) + conv(d // 2, d, 4) + 2 * d  # + BatchNorm

    def feedforward(c_in: int, c_out: int) -> int:  # 1x1 -> GELU -> dropout -> 1x1 -> 4x4 transposed conv -> BN
        return conv(c_in, d * mult) + conv(d * mult, ff_channel) + conv(ff_channel, c_out, 4) + 2 * c_out

    block = conv(d, d // 4) + feedforward(d + d // 2, d) + feedforward(d + d // 2, d // 2) + feedforward(d, d // 2)
    return stem + depth * block + linear(d, num_classes)


def official_raftmlp_params(dims: list[int], depths=(2, 2, 6, 2), kernels=((4, 8), (2, 4), (2, 4), (2,)),
                            strides=(4, 2, 2, 2), raft: int = 2, token_exp: int = 2, channel_exp: int = 4,
                            image: int = 224, num_classes: int = 1000) -> int:
    """The official RaftMLP (ser_pm, emb_cross_mlp, shortcut False): per level a CrossScaleMLPEmbedding, then blocks of
    vertical and horizontal PermutedBlocks (LayerNorm(C) + MLP over raft*H or raft*W) and a ChannelBlock."""
    total, c_in, size = 0, 3, image
    for dim, depth, ks, s in zip(dims, depths, kernels, strides):
        total += linear(c_in * sum(k * k for k in ks), dim)
        size //= s
        token = 2 * dim + linear(raft * size, token_exp * raft * size) + linear(token_exp * raft * size, raft * size)
        channel = 2 * dim + linear(dim, channel_exp * dim) + linear(channel_exp * dim, dim)
        total += depth * (2 * token + channel)
        c_in = dim
    return total + 2 * dims[-1] + linear(dims[-1], num_classes)  # head LayerNorm + classifier


RAFT = {  # recipe: (official widths, params by formula = ours, paper params (M), paper GMACs)
    "raftmlp_s": ([64, 128, 256, 512], 9_868_768, 9.9, 2.1),
    "raftmlp_m": ([96, 192, 384, 768], 21_413_632, 21.4, 4.3),
    "raftmlp_l": ([128, 192, 512, 1024], 36_184_672, 36.2, 6.5),
}


def test_wavemix_params_equal_the_official_structure() -> None:
    model = metablocks.create_model("wavemix_192_16")
    assert count_params(model) == official_wavemix_params() == 27_857_608
    block = model.stages[0].blocks[0]
    assert [name for name, _ in block.named_children()] == ["token_mixer"]  # one residual, no norm, no channel mixer
    assert model.stem.conv[2].kernel_size == (4, 4) and model.stem.conv[2].stride == (4, 4)


@pytest.mark.parametrize("size", [64, pytest.param(224, marks=pytest.mark.slow)])
def test_wavemix_forward_backward(size: int) -> None:
    model = metablocks.create_model("wavemix_192_16", img_size=size)
    x = torch.randn(1, 3, size, size)
    out = model(x)
    assert out.shape == (1, 1000)
    out.sum().backward()
    assert model.stages[0].blocks[0].token_mixer.reduction.weight.grad is not None


def test_wavemix_resolution_errors() -> None:
    """Three Haar levels halve the 1/4-resolution map three times: the input must be a multiple of 32."""
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("wavemix_192_16", ["img_size=100"])
    assert "levels=3 halves the map 3 time(s), so H and W must be divisible by 8; got a 25x25 map" in str(err.value)


@pytest.mark.parametrize("name", list(RAFT))
def test_raftmlp_params(name: str) -> None:
    dims, params, paper_m, _ = RAFT[name]
    model = metablocks.create_model(name)
    assert count_params(model) == official_raftmlp_params(dims) == params
    assert params_ok(params, paper_m)  # within the paper's rounding (9.9M, 21.4M, 36.2M)
    assert [len(s.blocks) for s in model.stages] == [4, 4, 12, 4]  # the official [2, 2, 6, 2], halves counted apart


def test_raftmlp_s_macs_forward_backward() -> None:
    _, _, _, paper_g = RAFT["raftmlp_s"]
    model = metablocks.create_model("raftmlp_s")
    assert abs(count_macs(model).total / 1e9 - paper_g) <= 0.03 * paper_g
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert model.stages[0].blocks[0].token_mixer.vertical.fc1.weight.grad is not None


def test_raftmlp_other_resolution() -> None:
    """The raft MLPs are sized by the grid: a model is built for one size (img_size), others are refused clearly."""
    model = metablocks.create_model("raftmlp_s", img_size=256)
    assert model.stages[0].blocks[0].token_mixer.vertical.fc1.in_features == 2 * 64  # raft 2 x 64 rows
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
        with pytest.raises(ValueError, match="fixed 256x256 token grid; got a 224x224 input"):
            model(torch.randn(1, 3, 224, 224))
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("raftmlp_s", ["img_size=230"])
    assert "a 230x230 map does not divide into 4x4 patches" in str(err.value)


def test_cross_scale_embedding_equals_unfold_linear() -> None:
    """Sum of per-kernel convs (weights sliced from fc) == the official concat of unfolds followed by fc."""
    embed = CrossScaleEmbed(3, 16, kernels=[4, 8])
    x = torch.randn(2, 3, 32, 32)
    unfolded = [F.unfold(x, k, padding=(k - 4) // 2, stride=4).transpose(1, 2) for k in (4, 8)]  # (B, 64, 3k^2)
    reference = embed.fc(torch.cat(unfolded, dim=2))  # (B, 64, 16)
    ours = embed(x)  # (B, 16, 8, 8)
    assert torch.allclose(ours.flatten(2).transpose(1, 2), reference, atol=1e-5)


def test_an_input_the_wavelet_levels_do_not_divide_is_told() -> None:
    model = metablocks.create_model("wavemix_192_16").eval()
    with pytest.raises(ValueError, match=r"wavelet mixer: levels=3 halves the map 3 time\(s\), so its sides must be "
                                         r"multiples of 8; this input gives a 50x50 map"):
        model(torch.randn(1, 3, 200, 200))
