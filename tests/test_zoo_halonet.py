"""HaloNets as recipes (timm byoanet: halonet26t, halonet50ts, sehalonet33ts, eca_halonext26ts, halonet_h1): equal to
timm (exact params, strict weight loading, logits with perturbed weights at 256); halo attention against
timm's HaloAttn and against a naive per-pixel loop, one output computed by hand; the checks' error texts; the
bottleneck without ``spatial`` unchanged."""
import math

import pytest
import torch

import metablocks
from metablocks.components.token_mixers.halo_attention import HaloAttention
from metablocks.interop.timm import load_timm_state_dict
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context, get, load_plugins
from zoo_timm import n_params, perturb

timm = pytest.importorskip("timm")

load_plugins()

PARAMS = {  # timm 1.0.31's counts
    "halonet26t": 12_480_288,
    "halonet50ts": 22_733_280,
    "sehalonet33ts": 13_691_712,
    "eca_halonext26ts": 10_756_885,
    "halonet_h1": 8_100_056,
}
FAST = ["halonet26t"]


def assert_equal_to_timm(name: str, sizes: tuple[int, ...] = (256,)) -> None:
    ours, theirs = metablocks.create_model(name).eval(), timm.create_model(name).eval()
    assert ours.recipe.timm_name == name
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    perturb(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.randn(1, 3, size, size, generator=gen)
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        assert expected.abs().max().item() > 0.1  # the perturbed blocks really move the logits
        assert (got - expected).abs().max().item() <= 1e-5, size


@pytest.mark.parametrize("name", FAST)
def test_equal_to_timm(name: str) -> None:
    assert_equal_to_timm(name)  # the next size whose halo maps are all multiples of 8 is 512 (stage 4: 1/32)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PARAMS if n not in FAST])
def test_equal_to_timm_slow(name: str) -> None:
    assert_equal_to_timm(name)


@pytest.mark.parametrize("name", PARAMS)
def test_params(name: str) -> None:
    with torch.device("meta"):
        model = metablocks.create_model(name)
    assert n_params(model) == PARAMS[name]
    assert model.recipe.img_size == (256, 256) and model.pretrained_cfg["input_size"] == (3, 256, 256)


def naive_halo(m: HaloAttention, x: torch.Tensor) -> torch.Tensor:
    """Halo attention one output pixel at a time, from the definition (the paper's Eq. with timm's position logits)."""
    B, _, H, W = x.shape
    b, h, win, s, heads = m.block_size, m.halo_size, m.win_size, m.q_stride, m.num_heads
    bq, dqk, dv = b // s, m.dim_qk, m.dim_v
    q = m.q(x)  # (B, heads * dqk, H / s, W / s)
    kv = torch.nn.functional.pad(m.kv(x), [h, h, h, h])  # zero keys/values in the halo past the border
    out = torch.zeros(B, heads * dv, H // s, W // s)
    for n in range(B):
        for head in range(heads):
            kv_head = kv[n, head * (dqk + dv):(head + 1) * (dqk + dv)]
            for oy in range(H // s):
                for ox in range(W // s):
                    by, bx, qh, qw = oy // bq, ox // bq, oy % bq, ox % bq
                    query = q[n, head * dqk:(head + 1) * dqk, oy, ox]
                    logits, values = [], []
                    for kh in range(win):
                        for kw in range(win):
                            key = kv_head[:dqk, by * b + kh, bx * b + kw]
                            logit = (query @ key) * dqk ** -0.5
                            logit = logit + query @ m.pos_embed.height_rel[kh - qh + win - 1]
                            logit = logit + query @ m.pos_embed.width_rel[kw - qw + win - 1]
                            logits.append(logit)
                            values.append(kv_head[dqk:, by * b + kh, bx * b + kw])
                    weights = torch.stack(logits).softmax(0)
                    out[n, head * dv:(head + 1) * dv, oy, ox] = (weights[:, None] * torch.stack(values)).sum(0)
    return m.pool(out)


@pytest.mark.parametrize("stride, block, halo, size", [(1, 4, 1, (8, 12)), (2, 4, 2, (8, 8)), (2, 3, 1, (6, 6))])
def test_halo_attention_naive_and_timm(stride: int, block: int, halo: int, size: tuple[int, int]) -> None:
    """Blocked, unfolded halo attention == the per-pixel loop == timm's HaloAttn (block 3, stride 2: the
    full-resolution attention then a 2x2 average pool)."""
    from timm.layers.halo_attn import HaloAttn

    torch.manual_seed(0)
    ours = HaloAttention(16, stride=stride, num_heads=2, block_size=block, halo_size=halo).eval()
    theirs = HaloAttn(16, stride=stride, num_heads=2, block_size=block, halo_size=halo).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        got, expected, reference = ours(x), theirs(x), naive_halo(ours, x)
    assert got.shape == (2, 16, size[0] // stride, size[1] // stride)
    assert (got - reference).abs().max().item() <= 1e-5
    assert (got - expected).abs().max().item() <= 1e-5


def test_halo_attention_by_hand() -> None:
    """Zero queries: every query of a block weighs its (b + 2h)^2 window alike, zero padding included. 2x2 blocks,
    halo 1 on a 4x4 map of 0..15: the top-left block's window is rows/cols -1..2, so each of its outputs is
    (0+1+2 + 4+5+6 + 8+9+10) / 16 = 45 / 16; the bottom-right block's is (5+6+7 + 9+10+11 + 13+14+15) / 16 = 90 / 16."""
    m = HaloAttention(1, num_heads=1, head_dim=1, block_size=2, halo_size=1).eval()
    with torch.no_grad():
        m.q.weight.zero_()
        m.kv.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))  # k = 0, v = x
        out = m(torch.arange(16.0).view(1, 1, 4, 4))[0, 0]
    assert torch.allclose(out[:2, :2], torch.full((2, 2), 45 / 16))
    assert torch.allclose(out[2:, 2:], torch.full((2, 2), 90 / 16))
    assert math.isclose(out[0, 2].item(), (1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11) / 16)  # top-right block: cols 1..4


def test_position_table_rows() -> None:
    """The (query, key) -> table-row index: offset kh - qh + win - 1 (timm's rel_logits_1d), so an 8x8 block with halo
    2 (window 12) uses rows 4..22 of the 23."""
    m = HaloAttention(64, block_size=8, halo_size=2)
    index = m.pos_embed.index
    assert index.shape == (8, 12) and m.pos_embed.height_rel.shape == (23, 8)
    assert index[0].tolist() == list(range(11, 23)) and index[7].tolist() == list(range(4, 16))


def test_misfit_map_is_a_located_error() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.create_model("halonet26t", img_size=224)
    text = str(err.value)
    assert "stages[2].blocks.halo.token_mixer.spatial" in text
    assert ("halo attention splits its 14x14 input map into 8x8 query blocks, so both sides must be multiples of "
            "block_size=8") in text
    assert "its 7x7 input map" in text  # stage 4 too


def test_heads_and_spatial_errors() -> None:
    with pytest.raises(RecipeError, match="the 256 output channels are not divisible by num_heads=7"):
        metablocks.create_model("halonet26t", overrides=["blocks.halo.token_mixer.spatial.num_heads=7"])
    with pytest.raises(RecipeError, match="groups and dilation set the 3x3 conv, which spatial replaces"):
        metablocks.create_model("halonet26t", overrides=["blocks.halo.token_mixer.groups=2"])
    with pytest.raises(RecipeError, match="spatial must work on \\(B, C, H, W\\) maps; window_attention is channels-last"):
        metablocks.create_model("halonet26t", overrides=["blocks.halo.token_mixer.spatial.type=window_attention"])


def test_stride_error_text() -> None:
    config = get("token_mixer", "halo_attention")(block_size=8)
    assert config.check(Context(64, out_dim=64, stride=4, resolution=(32, 32))) == []  # 2x2 queries per block
    assert config.check(Context(64, out_dim=64, stride=3, resolution=(24, 24))) == [
        "stride 3 needs the queries subsampled by 3 inside each 8x8 block (a block_size that is a multiple of 3, "
        "avg_down false); the 2x2 average pool strides by 2 only"]


def test_runtime_misfit_map() -> None:
    """A model run at another input size than it was checked for says what its halo attention needs."""
    with pytest.raises(ValueError, match="halo attention needs map sides that are multiples of block_size=8, got 12x12"):
        HaloAttention(16, block_size=8)(torch.randn(1, 16, 12, 12))


def test_bottleneck_without_spatial_unchanged() -> None:
    """No ``spatial``: the same module names and state as before it existed (conv2 the 3x3 conv); dumps omit it."""
    config = get("token_mixer", "bottleneck")()
    assert "spatial" not in config.dump()
    block = config.build(Context(256, out_dim=256))
    assert [k for k in block.state_dict() if not k.startswith("bn")] == ["conv1.weight", "conv2.weight", "conv3.weight"]
    assert isinstance(block.spatial, torch.nn.Identity) and block.conv2.kernel_size == (3, 3)


def test_attn_at_mid() -> None:
    """``attn_at: mid`` gates the bottleneck width after act2 (timm ByobNet's BottleneckBlock.attn), ``last`` (the
    default) the output after bn3; without an attn it is an error."""
    config = get("token_mixer", "bottleneck")
    mid = config(attn="eca", attn_at="mid").build(Context(256, out_dim=256))
    last = config(attn="squeeze_excite").build(Context(256, out_dim=256))
    assert mid.se.dim == 64 and last.se.down.in_channels == 256
    assert "attn_at" not in config(attn="eca").dump()  # at its default: left out of dumps and model_ids
    assert config(attn_at="mid").check(Context(256)) == ["attn_at='mid' places an attn gate, but attn is not set"]
