"""BiFormer T/S/B (official code: rayleizhu/BiFormer, models/biformer.py + ops/bra_legacy.py; timm has no BiFormer).

The official code is not available here, so what was measured against it is held as data: the parameter counts of
the official models, and the key/shape manifest of their state_dicts (tests/data/biformer_official_keys.json,
written once from the official code) that the converter must map onto our state_dict exactly. The logits were
compared outside the repository (official weights, perturbed norms and BN statistics, mapped by the converter).
The routing is checked by hand on tiny tensors, the whole mixer against a slow per-region reference."""
import pytest
import torch

from metablocks.components.token_mixers.attention_lepe import AttentionLePEConfig
from metablocks.components.token_mixers.bra import BiLevelRoutingAttentionConfig, gather_regions, regions, route
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
    x = torch.randn(2, *map_size, 32)
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
        "n_win=7 does not divide the 40x40 map of stage 1: the map is cut into 7x7 regions, so its sides must be "
        "multiples of 7"]
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
