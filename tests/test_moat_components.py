"""MOAT's components on their own, against values computed by hand: TensorFlow's "same" padding (conv and average
pool), the relative position index and the bilinear resize of the bias table, the MBConv's widths, the attention's
receptive field (global / windowed) and the errors of their checks."""
import pytest
import torch
import torch.nn.functional as F

from metablocks.components.common.same_padding import Conv2dSame, avg_pool_same, conv2d, same_pads
from metablocks.components.token_mixers.relpos_attention import (RelPosAttentionConfig, relative_bias,
                                                                 relative_position_index, resized_table)
from metablocks.recipe.errors import RecipeError, check_block
from metablocks.registry import Context, get, load_plugins

load_plugins()  # the registry by name (get) needs the built-in components imported


@pytest.mark.parametrize("size, kernel, stride, pads", [
    (224, 3, 2, (0, 1)),  # even map, stride 2: the odd row of padding goes below, none above
    (7, 3, 2, (1, 1)),  # odd map: symmetric
    (8, 2, 2, (0, 0)),  # the 2x2 shortcut pool of an even map pads nothing
    (7, 2, 2, (0, 1)),
    (5, 3, 1, (1, 1)),  # stride 1: k // 2 each side, as PyTorch
    (6, 3, 2, (0, 1)),
])
def test_same_pads_by_hand(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert same_pads(size, kernel, stride) == pads


def test_conv_same_samples_from_the_top_left() -> None:
    """A 3x3 all-ones stride-2 conv on a 4x4 map: TF pads 0 above/left and 1 below/right, so output (0, 0) sums
    rows/cols 0..2 and output (1, 1) sums rows/cols 2..3 (the zero padding adds nothing)."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    conv = conv2d(1, 1, 3, stride=2, bias=False, padding="same")
    assert isinstance(conv, Conv2dSame)
    torch.nn.init.ones_(conv.weight)
    with torch.no_grad():
        y = conv(x)[0, 0]
    assert y.tolist() == [[x[0, 0, :3, :3].sum().item(), x[0, 0, :3, 2:].sum().item()],
                          [x[0, 0, 2:, :3].sum().item(), x[0, 0, 2:, 2:].sum().item()]]
    # symmetric padding (PyTorch's padding=1) samples around rows 0 and 2 instead: (0, 0) sums rows/cols 0..1 only
    sym = conv2d(1, 1, 3, stride=2, bias=False, padding="symmetric")
    torch.nn.init.ones_(sym.weight)
    with torch.no_grad():
        assert sym(x)[0, 0, 0, 0].item() == x[0, 0, :2, :2].sum().item()
    assert type(conv2d(1, 1, 3, stride=1, padding="same")) is torch.nn.Conv2d  # stride 1: the conventions agree


def test_avg_pool_same_leaves_the_padding_out_of_the_mean() -> None:
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert avg_pool_same(x, 2, 2)[0, 0].tolist() == [[2.0, 3.5], [6.5, 8.0]]
    # 3x3 stride 2 on 3x3: pads 1 each side; the corner window sees 4 positions
    assert avg_pool_same(x, 3, 2)[0, 0].tolist() == [[2.0, 3.0], [5.0, 6.0]]
    y = torch.randn(2, 3, 8, 8)  # even map, 2x2: no padding, the plain pool
    assert torch.equal(avg_pool_same(y, 2, 2), F.avg_pool2d(y, 2, 2))


def test_relative_position_index_by_hand() -> None:
    """2x2 window, tokens (0,0) (0,1) (1,0) (1,1); the 3x3 table is indexed (d_row + 1) * 3 + (d_col + 1) with
    d = key - query (deeplab2's orientation)."""
    assert relative_position_index(2, 2).tolist() == [[4, 5, 7, 8], [3, 4, 6, 7], [1, 2, 4, 5], [0, 1, 3, 4]]
    index = relative_position_index(3, 5)
    assert index.shape == (15, 15) and index.diagonal().eq(2 * 9 + 4).all()  # d = 0: the table's centre


def test_relative_bias_is_the_gather() -> None:
    table = torch.randn(3, 5, 7)
    assert torch.equal(relative_bias(table, 3, 4), table.flatten(1)[:, relative_position_index(3, 4)])


def test_resized_table_is_bilinear_with_half_pixel_centres() -> None:
    table = torch.arange(3.0).expand(1, 3, 3)  # a ramp 0, 1, 2 along the width
    assert resized_table(table, 2, 2) is table  # 2x2 window: (3, 3) already
    out = resized_table(table, 3, 3)  # to (5, 5): source x = (i + 0.5) * 3 / 5 - 0.5 = -0.2, 0.4, 1, 1.6, 2.2
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 0.4, 1.0, 1.6, 2.0]))
    assert out.shape == (1, 5, 5)


def test_relpos_attention_equals_the_formula() -> None:
    """softmax(q k^T / sqrt(d) + B[h, key - query]) v, written out."""
    cfg = RelPosAttentionConfig(head_dim=4, rel_pos_size=2)
    attn = cfg.build(Context(8, resolution=(2, 3))).eval()
    with torch.no_grad():
        attn.relative_position_embedding.normal_()
    x = torch.randn(1, 2, 3, 8)
    q, k, v = attn.qkv(x.flatten(1, 2)).unflatten(2, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
    table = resized_table(attn.relative_position_embedding, 2, 3)  # (2, 3, 5): 3x3 -> 3x5
    rows, cols = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2])
    bias = table[:, rows[None, :] - rows[:, None] + 1, cols[None, :] - cols[:, None] + 2]  # (heads, N, N)
    expected = attn.proj(((q @ k.transpose(-1, -2) / 2.0 + bias).softmax(-1) @ v).transpose(1, 2).flatten(2))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected.unflatten(1, (2, 3)), atol=1e-6)
        other = attn(torch.randn(1, 4, 4, 8))  # another size: the table is resized again, eagerly
    assert other.shape == (1, 4, 4, 8)


@pytest.mark.parametrize("window, changed", [(None, "all"), ((2, 2), "window")])
def test_relpos_attention_receptive_field(window, changed) -> None:
    attn = RelPosAttentionConfig(head_dim=4, window_size=window).build(Context(8, resolution=(4, 4))).eval()
    x = torch.randn(1, 4, 4, 8)
    y = x.clone()
    y[0, 1, 2] += 1.0  # in the top-right 2x2 window
    with torch.no_grad():
        moved = (attn(x) - attn(y)).abs().amax(-1)[0] > 1e-6
    expected = torch.ones(4, 4, dtype=torch.bool) if changed == "all" else torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, 2:] = True
    assert torch.equal(moved, expected)


def test_no_position_bias() -> None:
    attn = RelPosAttentionConfig(head_dim=4, rel_pos_size=None).build(Context(8, resolution=(3, 3)))
    assert attn.relative_position_embedding is None and sum(p.numel() for p in attn.parameters()) == 4 * 8 * 8 + 4 * 8


def test_mbconv_widths_follow_the_output_width() -> None:
    """deeplab2: hidden = expansion x the block's output width, SE bottleneck = int(0.25 x output width), also in the
    first block of a stage (in 32 -> out 64: hidden 256, SE 16); the stride sits on the depthwise conv."""
    cfg = get("token_mixer", "mbconv")(padding="same")
    m = cfg.module(64, in_dim=32, stride=2, **cfg.kwargs())
    assert m.expand_conv.weight.shape == (256, 32, 1, 1) and m.depthwise_conv.weight.shape == (256, 1, 3, 3)
    assert m.se.reduce.weight.shape == (16, 256, 1, 1) and m.shrink_conv.weight.shape == (64, 256, 1, 1)
    assert m.depthwise_conv.stride == (2, 2) and m(torch.randn(1, 32, 7, 7)).shape == (1, 64, 4, 4)
    params = 32 * 256 + 2 * 256 + 9 * 256 + 2 * 256 + (256 * 16 + 16 + 16 * 256 + 256) + 256 * 64 + 64
    assert sum(p.numel() for p in m.parameters()) == params
    no_se = get("token_mixer", "mbconv")(se_ratio=None).build(Context(16))
    assert isinstance(no_se.se, torch.nn.Identity)


def test_moat_stem() -> None:
    stem = get("stem", "moat")(channels=[64, 64], padding="same").build(Context(3)).eval()
    assert [n for n, _ in stem.named_children()] == ["conv1", "norm1", "act1", "conv2"]  # no norm/act after the last
    assert stem(torch.randn(1, 3, 15, 16)).shape == (1, 64, 8, 8)
    assert get("stem", "moat")().out_resolution((15, 16)) == (8, 8) and get("stem", "moat")().out_dim(96) == 64


@pytest.mark.parametrize("fields, message", [
    ({"token_mixer": {"type": "relpos_attention", "head_dim": 24}}, "dim=64 is not divisible by head_dim=24"),
    ({"token_mixer": {"type": "relpos_attention", "window_size": [3, 3]}}, "does not split into 3x3 windows"),
    ({"token_mixer": {"type": "mbconv", "kernel_size": 4}}, "kernel_size must be odd"),
    ({"token_mixer": {"type": "mbconv", "expansion": 0.01}}, "expansion=0.01 leaves no channels at dim=64"),
])
def test_check_errors(fields: dict, message: str) -> None:
    from metablocks.blocks import BlockConfig

    with pytest.raises(RecipeError, match=message):
        check_block(BlockConfig(**fields, channel_mixer=None), Context(64, resolution=(8, 8)), source="test")


@pytest.mark.parametrize("se_ratio, norm", [(0.25, "batchnorm"), (None, {"type": "layernorm", "eps": 1e-5})])
def test_mbconv_and_shortcut_in_either_layout(se_ratio, norm) -> None:
    """Channels-last (pointwise convs as matmuls, BatchNorm and the depthwise conv on permuted views) computes what
    channels-first does, with the same state_dict."""
    cfg = get("token_mixer", "mbconv")(se_ratio=se_ratio, norm=norm, padding="same")
    first = cfg.build(Context(16, out_dim=24, stride=2)).eval()
    last = cfg.build(Context(16, out_dim=24, stride=2, layout="channels_last")).eval()
    with torch.no_grad():
        for p in first.parameters():
            p.normal_()
        for name, b in first.named_buffers():
            b.copy_(torch.rand_like(b.float()) + 0.5 if "running" in name else b)
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 16, 9, 8)
    with torch.no_grad():
        assert torch.allclose(last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), first(x), atol=1e-4)
    shortcut = get("shortcut", "pool_project")(pool_size=3)
    a, b = shortcut.build(Context(16, out_dim=24, stride=2)), shortcut.build(Context(16, out_dim=24, stride=2, layout="channels_last"))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.allclose(b(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), a(x), atol=1e-5)
    assert a(x).shape == (2, 24, 5, 4)
