"""Inception Transformer (official code: sail-sg/iFormer models/inception_transformer.py) as recipes: pre-norm
blocks whose token mixer is the inception mixer (a channel split into a conv / max-pool high-frequency part and a
pooled-attention low-frequency part, fused by x + dwconv(x), projected by a 1x1 conv), a learned position embedding
per stage, layer scale in stages 3-4.

The official code is not available here: its parameter counts and state_dict keys/shapes are held in
tests/data/iformer_official_keys.json (written once from the official code), which the converter must place onto
our state_dict strictly. Outside the repository, the official models' logits equalled ours loaded through the
converter (perturbed weights, eval, 2x3x224x224): max |diff| 4.8e-7 (S), 6.0e-7 (B, L); at 256x256 (both resize
their position tables bilinearly) 4.2e-7 (S). Set IFORMER_REF to the official checkout to rerun the S comparison
(slow)."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from official_keys import manifest, n_params, zero_state

import metablocks
from metablocks.components.token_mixers.inception_mixer import (
    InceptionMixer,
    InceptionMixerConfig,
)
from metablocks.interop.official import convert_official
from metablocks.interop.official.iformer import convert_iformer
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context

SIZES = ["iformer_small", "iformer_base", "iformer_large"]
OFFICIAL_PARAMS = {"iformer_small": 19_866_344, "iformer_base": 47_866_216, "iformer_large": 86_637_096}  # measured


def meta_model(name: str) -> metablocks.MetaModel:
    with torch.device("meta"):
        return metablocks.create_model(name)


@pytest.mark.parametrize("name", SIZES)
def test_params_equal_the_official_code(name: str) -> None:
    assert n_params(meta_model(name)) == OFFICIAL_PARAMS[name] == manifest("iformer")["models"][name]["params"]


@pytest.mark.parametrize("name", SIZES)
def test_converter_maps_every_official_key_onto_ours(name: str) -> None:
    """Key for key and shape for shape (meta tensors: no memory); the strict load is the next test."""
    with torch.device("meta"):
        official = {key: torch.empty(shape) for key, shape in manifest("iformer")["models"][name]["keys"]}
    converted = convert_iformer(official)
    ours = meta_model(name).state_dict()
    assert len(converted) == len(official)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "iformer_small" else n for n in SIZES])
def test_official_state_dict_loads_strictly(name: str) -> None:
    official = zero_state("iformer", name)
    official["pos_embed2"] = torch.arange(28 * 28 * 192, dtype=torch.float).reshape(1, 28, 28, 192)
    model = convert_official(official, name)
    assert model.official_dropped == []
    assert len(model.state_dict()) == len(official)
    # (1, H, W, C) -> (1, H*W, C), row-major: position (i, j) is token i*W + j
    table = model.stages[1].pos_embed.weight
    assert table.shape == (1, 784, 192) and torch.equal(table[0, 3 * 28 + 5], official["pos_embed2"][0, 3, 5])


def test_converter_key_names() -> None:
    keys = {"patch_embed.proj2.weight": "stem.layers.1.conv.weight", "patch_embed.norm1.running_var":
            "stem.layers.0.norm.running_var", "patch_embed3.norm.bias": "stages.2.downsample.norm.bias",
            "blocks4.2.attn.high_mixer.proj1.weight": "stages.3.blocks.2.token_mixer.conv_dw.weight",
            "blocks1.0.attn.high_mixer.proj2.bias": "stages.0.blocks.0.token_mixer.pool_proj.bias",
            "blocks2.1.attn.low_mixer.qkv.weight": "stages.1.blocks.1.token_mixer.qkv.weight",
            "blocks3.8.attn.conv_fuse.weight": "stages.2.blocks.8.token_mixer.fuse.weight",
            "blocks3.8.layer_scale_2": "stages.2.blocks.8.layer_scale2.scale", "norm.weight": "head.norm.weight",
            "head.bias": "head.fc.bias", "blocks3.0.mlp.fc1.weight": "stages.2.blocks.0.channel_mixer.fc1.weight"}
    converted = convert_iformer({k: torch.zeros(1) for k in keys})
    assert sorted(converted) == sorted(keys.values())


def test_recipes_follow_the_official_ramp() -> None:
    """attention_heads per block (the official lists), pool 2 in stages 1-2, layer scale in stages 3-4 only."""
    ramps = {"iformer_small": [1] * 3 + [3] * 3 + [7] * 4 + [9] * 5 + [11] * 3,
             "iformer_base": [1] * 4 + [3] * 6 + [8] * 7 + [10] * 7 + [15] * 6,
             "iformer_large": [1] * 4 + [3] * 6 + [10] * 9 + [12] * 9 + [19] * 8}
    for name, ramp in ramps.items():
        recipe = metablocks.load_recipe(name)
        heads = [stage.block(i).token_mixer.attention_heads for stage in recipe.stages for i in range(stage.depth)]
        pools = [stage.block(0).token_mixer.pool_size for stage in recipe.stages]
        assert heads == ramp and pools == [2, 2, 1, 1]
        assert [stage.layer_scale for stage in recipe.stages] == [None, None, 1e-6, 1e-6]
        assert recipe.img_size == (224, 224) and recipe.paper.resolution == 224
    model = meta_model("iformer_small")
    assert not hasattr(model.stages[1].blocks[0], "layer_scale1") and hasattr(model.stages[2].blocks[0], "layer_scale1")


# --- the inception mixer ------------------------------------------------------------------------------------------

def test_mixer_split_and_fuse_by_hand() -> None:
    """dim 4, num_heads 2 (head_dim 2), 1 attention head: channels [x_c | x_p | x_l0 x_l1]. With conv1 = [1, 2],
    identity dw taps, pool_proj = [1, -1], q = k = 0 (v = x_l), fuse = identity taps (Y + fuse(Y) = 2Y) and a proj
    picking channels 0, 2, 4, 5: out = 2 * [GELU(x_c), GELU(max x_p), mean x_l0, mean x_l1] on a 2x2 map."""
    mixer = InceptionMixerConfig(num_heads=2, attention_heads=1, pool_size=2).build(Context(4, resolution=(2, 2)))
    assert (mixer.high, mixer.half) == (2, 1) and mixer.fuse.in_channels == 6
    with torch.no_grad():
        for p in mixer.parameters():
            p.zero_()
        mixer.conv1.weight[:, 0, 0, 0] = torch.tensor([1.0, 2.0])
        mixer.conv_dw.weight[:, 0, 1, 1] = 1.0
        mixer.pool_proj.weight[:, 0, 0, 0] = torch.tensor([1.0, -1.0])
        mixer.qkv.weight[4:6] = torch.eye(2)  # v = x_l
        mixer.fuse.weight[:, 0, 1, 1] = 1.0
        for row, channel in enumerate([0, 2, 4, 5]):
            mixer.proj.weight[row, channel] = 1.0
        x = torch.tensor([[[1.0, -1.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, -2.0]],
                          [[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]])[None]
        gelu = lambda v: v * (1 + math.erf(v / math.sqrt(2))) / 2
        expected = torch.stack([torch.tensor([[gelu(1.0), gelu(-1.0)], [gelu(0.0), gelu(2.0)]]),
                                torch.full((2, 2), gelu(3.0)), torch.full((2, 2), 2.5), torch.full((2, 2), 2.0)])[None]
        assert torch.allclose(mixer(x), 2 * expected, atol=1e-6)


def test_mixer_low_frequency_attention_is_softmax_qkt_v() -> None:
    """pool_size 1: Y_l = softmax(Q K^T / sqrt(d)) V over all tokens, heads concatenated channel-wise."""
    torch.manual_seed(0)
    mixer = InceptionMixer(16, high=4, heads=3, pool_size=1)  # head_dim 4: 12 low channels
    x = torch.randn(2, 12, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)  # (B, 15, 12)
    q, k, v = mixer.qkv(tokens).chunk(3, dim=-1)
    heads = [torch.softmax(q[..., h * 4:(h + 1) * 4] @ k[..., h * 4:(h + 1) * 4].transpose(1, 2) / 2, -1)
             @ v[..., h * 4:(h + 1) * 4] for h in range(3)]
    expected = torch.cat(heads, -1).transpose(1, 2).reshape(2, 12, 3, 5)
    with torch.no_grad():
        assert torch.allclose(mixer.attend(x), expected, atol=1e-5)
    pooled = InceptionMixer(16, high=4, heads=3, pool_size=2)
    assert pooled.attend(torch.randn(1, 12, 4, 6)).shape == (1, 12, 4, 6)  # pooled to 2x3, upsampled back




def tiny(tmp_path: Path, *, mixer0: str = "num_heads: 2, attention_heads: 1", dim0: int = 32, img_size: int = 64) -> Path:
    """The iFormer base recipe at one block per stage, 32-128 wide (a fast model with every part of the real one)."""
    path = tmp_path / "iformer_tiny.yaml"
    path.write_text(f"""extends: iformer/iformer.yaml
name: iformer_tiny
img_size: {img_size}
num_classes: 10
stages:
  - {{depth: 1, dim: {dim0}, token_mixer: {{type: inception_mixer, {mixer0}, pool_size: 2}}}}
  - {{depth: 1, dim: 64, token_mixer: {{type: inception_mixer, num_heads: 4, attention_heads: 2, pool_size: 2}}}}
  - {{depth: 2, dim: 96, token_mixer: [{{type: inception_mixer, num_heads: 6, attention_heads: 3, pool_size: 1}},
                                      {{type: inception_mixer, num_heads: 6, attention_heads: 4, pool_size: 1}}]}}
  - {{depth: 1, dim: 128, token_mixer: {{type: inception_mixer, num_heads: 8, attention_heads: 6, pool_size: 1}}}}
""")
    return path


def test_position_embedding_resizes_as_the_official_code(tmp_path: Path) -> None:
    """Another input size: the official _get_pos_embed is a bilinear resize (no antialias) of the (1, H, W, C) table."""
    pos = metablocks.create_model(tiny(tmp_path)).stages[3].pos_embed  # built for a 2x2 map
    table = pos.weight.detach().reshape(1, 2, 2, -1)
    official = F.interpolate(table.permute(0, 3, 1, 2), size=(3, 4), mode="bilinear").permute(0, 2, 3, 1)
    assert torch.allclose(pos.resized((3, 4)), official.reshape(1, 12, -1), atol=1e-6)


def test_small_model_forward_backward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = metablocks.create_model(tiny(tmp_path))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.sum().backward()
    mixer = model.stages[0].blocks[0].token_mixer
    assert all(p.grad is not None for p in (mixer.qkv.weight, mixer.conv1.weight, mixer.pool_proj.weight,
                                            mixer.fuse.weight, model.stages[0].pos_embed.weight))
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)  # another size: the tables resize


# --- errors -------------------------------------------------------------------------------------------------------

def test_too_many_attention_heads_is_a_located_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"stages\[0\].*attention_heads=2 of num_heads=2 leaves 0 high-frequency "
                                          r"channels of dim=32"):
        metablocks.load_recipe(tiny(tmp_path, mixer0="num_heads: 2, attention_heads: 2"))
    with pytest.raises(RecipeError, match=r"leaves 27 high-frequency channels of dim=36; they must be a positive even"):
        metablocks.load_recipe(tiny(tmp_path, dim0=36, mixer0="num_heads: 4, attention_heads: 1"))


def test_heads_must_divide_the_width(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"stages\[0\].*dim=32 is not divisible by num_heads=3"):
        metablocks.load_recipe(tiny(tmp_path, mixer0="num_heads: 3, attention_heads: 1"))


def test_pool_size_must_divide_the_map(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"pool_size=2 does not divide the 25x25 map"):
        metablocks.load_recipe(tiny(tmp_path, img_size=200))
    model = metablocks.create_model(tiny(tmp_path)).eval()  # built at 64: an input giving a 25x25 map is told so
    with pytest.raises(ValueError, match=r"inception mixer: pool_size=2 does not divide this input's 25x25 map"):
        model(torch.randn(1, 3, 100, 100))


# --- the official code, where it is checked out -------------------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("IFORMER_REF"), reason="IFORMER_REF (the official checkout) not set")
@pytest.mark.slow
def test_logits_equal_the_official_code() -> None:
    sys.path.insert(0, os.environ["IFORMER_REF"])
    from models.inception_transformer import iformer_small

    official = iformer_small().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in official.parameters():  # the official init zeroes the head: move every weight
            p.add_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim == 1 else 0.02))
        for name, b in official.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) * 1.5 + 0.5)
    ours = convert_official(official.state_dict(), "iformer_small")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - official(x)).abs().max().item() <= 1e-5


def test_resolved_dump_round_trips(tmp_path: Path) -> None:
    """The per-block mixer lists, the per-stage position embeddings and layer scales survive ``info --resolved``."""
    recipe = metablocks.load_recipe("iformer_small")
    (tmp_path / "resolved.yaml").write_text(recipe.to_yaml())
    again = metablocks.load_recipe(tmp_path / "resolved.yaml")
    assert again.model_id == recipe.model_id and again.dump() == recipe.dump()
