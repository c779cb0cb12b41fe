"""Hand-checkable behaviour of the core token mixers: identity, pooling, sepconv, attention (+ spatial reduction)."""
import math

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.components.token_mixers.attention import Attention
from metablocks.components.token_mixers.pooling import Pooling
from metablocks.components.token_mixers.sepconv import SepConv
from metablocks.registry import Context


def test_pooling_of_a_constant_map_is_zero() -> None:
    assert torch.equal(Pooling(4)(torch.full((1, 4, 5, 5), 3.0)), torch.zeros(1, 4, 5, 5))


def test_pooling_ignores_padding_at_the_border() -> None:
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = Pooling(1)(x)
    assert out[0, 0, 0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4 - 0)  # corner: mean over 4 real pixels
    assert out[0, 0, 1, 1] == pytest.approx(36 / 9 - 4)


def test_identity_mixer() -> None:
    block = metablocks.MetaFormerBlock(dim=4, token_mixer="identity", channel_mixer=None, norm=None)
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(block(x), 2 * x)


def test_sepconv_structure_and_params() -> None:
    mixer = SepConv(8, kernel_size=7, expansion_ratio=2, act=metablocks.BlockConfig(token_mixer="sepconv").token_mixer.act,
                    act2=metablocks.BlockConfig(token_mixer="sepconv").token_mixer.act2)
    # pointwise 8->16, depthwise 7x7 on 16, pointwise 16->8, StarReLU scale+bias, no conv biases
    assert sum(p.numel() for p in mixer.parameters()) == 8 * 16 + 16 * 49 + 16 * 8 + 2
    assert mixer(torch.randn(2, 8, 9, 9)).shape == (2, 8, 9, 9)


def naive_attention(x: torch.Tensor, mixer: Attention, heads: int) -> torch.Tensor:
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    q, k, v = mixer.qkv(tokens).chunk(3, dim=-1)
    split = lambda t: t.reshape(b, h * w, heads, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(b, h * w, -1)
    return mixer.proj(out).reshape(b, h, w, c)


def test_attention_equals_the_softmax_formula() -> None:
    config = Attention.Config(head_dim=8)
    mixer = config.build(Context(32)).eval()
    assert mixer.num_heads == 4
    x = torch.randn(2, 5, 6, 32)
    assert torch.allclose(mixer(x), naive_attention(x, mixer, 4), atol=1e-5)


def test_attention_heads_from_num_heads_and_qkv_bias() -> None:
    config = Attention.Config(num_heads=6, qkv_bias=True)
    assert config.heads(48) == (6, 8)
    mixer = config.build(Context(48))
    assert mixer.qkv.bias is not None and mixer.qkv.weight.shape == (144, 48)


def test_attention_with_spatial_reduction_attends_to_the_reduced_map() -> None:
    config = Attention.Config(num_heads=2, sr_ratio=2)
    mixer = config.build(Context(16)).eval()
    x = torch.randn(1, 4, 4, 16)
    tokens = x.reshape(1, 16, 16)
    q = mixer.q(tokens).reshape(1, 16, 2, 8).transpose(1, 2)
    reduced = mixer.norm(mixer.sr(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2))  # (1, 4, 16): 2x2 keys
    k, v = mixer.kv(reduced).reshape(1, 4, 2, 2, 8).permute(2, 0, 3, 1, 4)
    out = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    expected = mixer.proj(out.transpose(1, 2).reshape(1, 16, 16)).reshape(1, 4, 4, 16)
    assert torch.allclose(mixer(x), expected, atol=1e-5)
    assert config.check(Context(16, resolution=(1, 1))) == ["sr_ratio=2 exceeds the 1x1 map"]


def test_dwconv_refuses_a_bias_it_would_ignore() -> None:
    from metablocks.components.token_mixers.dwconv import DWConv

    config = DWConv.Config(kernel_size=13, small_kernel=5, bias=False)
    assert config.check(Context(8)) == ["bias has no effect with small_kernel: each branch's BatchNorm supplies the shift"]
    assert DWConv.Config(kernel_size=13, small_kernel=5).check(Context(8)) == []
