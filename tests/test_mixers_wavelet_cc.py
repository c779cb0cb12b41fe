"""Token mixers ``wavelet`` (WaveMix) and ``criss_cross`` (CCNet): hand-computed Haar sub-bands, invertibility and
energy, official parameter counts, recipe checks, criss-cross receptive fields and a loop-by-loop reference."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.components.token_mixers.criss_cross import CrissCrossAttention
from metablocks.components.token_mixers.wavelet import haar_dwt2d, haar_subbands
from metablocks.registry import Context


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(kind: str, name: str, dim: int, **fields) -> torch.nn.Module:
    return metablocks.registry.get(kind, name).model_validate({"type": name, **fields}).build(Context(dim))


# ---------------------------------------------------------------------------------------------------------- Haar DWT

IMAGE = [[1., 3., 0., 2.],
         [4., 8., 5., 1.],
         [2., 2., 7., 3.],
         [6., 0., 1., 9.]]


def test_haar_of_a_known_4x4_image() -> None:
    """Each 2x2 block [[p, q], [r, s]] gives LL=(p+q+r+s)/2, LH=(p+q-r-s)/2, HL=(p-q+r-s)/2, HH=(p-q-r+s)/2."""
    ll, highs = haar_dwt2d(torch.tensor(IMAGE)[None, None])
    assert ll.shape == (1, 1, 2, 2) and highs.shape == (1, 1, 3, 2, 2)
    # block (0,0) = [[1,3],[4,8]]: LL=16/2, LH=(4-12)/2, HL=(-2-4)/2, HH=(-2+4)/2 ... and so on for the other blocks
    assert ll[0, 0].tolist() == [[8., 4.], [5., 10.]]
    assert highs[0, 0, 0].tolist() == [[-4., -2.], [-1., 0.]]  # LH: high-pass along H
    assert highs[0, 0, 1].tolist() == [[-3., 1.], [3., -2.]]  # HL: high-pass along W
    assert highs[0, 0, 2].tolist() == [[1., -3.], [-3., 6.]]  # HH
    # orthonormal: 304 = 205 + 21 + 23 + 55
    assert (torch.tensor(IMAGE) ** 2).sum().item() == 304.0
    assert (ll ** 2).sum().item() + (highs ** 2).sum().item() == 304.0


def test_wavemix_channel_order_of_the_subbands() -> None:
    """Level j is [LL of every channel, then LH, HL, HH of channel 0, of channel 1, ...] (official cat + reshape)."""
    x = torch.stack([torch.tensor(IMAGE), 10 * torch.tensor(IMAGE)])[None]  # (1, 2, 4, 4)
    (level1,) = haar_subbands(x, 1)
    assert level1.shape == (1, 8, 2, 2)
    firsts = level1[0, :, 0, 0].tolist()  # block (0,0) of each channel
    assert firsts == [8., 80., -4., -3., 1., -40., -30., 10.]
    level1, level2 = haar_subbands(x, 2)
    # level 2 of channel 0 is the Haar of LL1 = [[8, 4], [5, 10]]: LL=27/2, LH=(12-15)/2, HL=(4-5)/2, HH=(4+5)/2
    assert level2[0, :, 0, 0].tolist() == [13.5, 135., -1.5, -0.5, 4.5, -15., -5., 45.]


def inverse_haar(ll: torch.Tensor, highs: torch.Tensor) -> torch.Tensor:
    """The synthesis step, written from the 2x2 block equations: p=(LL+LH+HL+HH)/2, q=(LL+LH-HL-HH)/2, ..."""
    lh, hl, hh = highs.unbind(dim=2)
    p, q = (ll + lh + hl + hh) / 2, (ll + lh - hl - hh) / 2
    r, s = (ll - lh + hl - hh) / 2, (ll - lh - hl + hh) / 2
    out = torch.empty(*ll.shape[:2], 2 * ll.shape[2], 2 * ll.shape[3], dtype=ll.dtype)
    out[..., 0::2, 0::2], out[..., 0::2, 1::2], out[..., 1::2, 0::2], out[..., 1::2, 1::2] = p, q, r, s
    return out


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_haar_pyramid_is_invertible_and_preserves_energy(levels: int) -> None:
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    ll, pyramid = x, []
    for _ in range(levels):
        ll, highs = haar_dwt2d(ll)
        pyramid.append(highs)
    assert ll.shape == (2, 3, 16 >> levels, 24 >> levels)
    energy = (ll ** 2).sum() + sum((h ** 2).sum() for h in pyramid)
    assert torch.allclose(energy, (x ** 2).sum(), rtol=1e-12, atol=0)
    for highs in reversed(pyramid):
        ll = inverse_haar(ll, highs)
    assert torch.allclose(ll, x, rtol=0, atol=1e-12)


def test_haar_is_differentiable() -> None:
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_dwt2d(t), (x,))
    # the adjoint of an orthonormal transform is its inverse: the gradient of <DWT(x), g> is IDWT(g)
    g_ll, g_highs = torch.randn(1, 2, 2, 3, dtype=torch.float64), torch.randn(1, 2, 3, 2, 3, dtype=torch.float64)
    ll, highs = haar_dwt2d(x)
    ((ll * g_ll).sum() + (highs * g_highs).sum()).backward()
    assert torch.allclose(x.grad, inverse_haar(g_ll, g_highs), atol=1e-12)


# ---------------------------------------------------------------------------------------------------------- WaveMix

def wavemix_params(dim: int, mult: int, ff: int, levels: int) -> int:
    """The official Level{L}Waveblock: reduction C -> C/4; per level conv(in -> C*mult), conv(-> ff),
    ConvTranspose 4x4 (ff -> out), BN(out), with in = C at the coarsest level else 3C/2, out = C at level 1 else C/2."""
    total = dim * (dim // 4) + dim // 4
    for j in range(1, levels + 1):
        c_in = dim if j == levels else dim + dim // 2
        c_out = dim if j == 1 else dim // 2
        total += c_in * dim * mult + dim * mult  # 1x1 conv
        total += dim * mult * ff + ff  # 1x1 conv
        total += ff * c_out * 4 * 4 + c_out  # transposed conv
        total += 2 * c_out  # BatchNorm affine
    return total


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_wavemix_param_count_and_names(levels: int) -> None:
    mixer = build("token_mixer", "wavelet", 64, levels=levels, mult=2, ff_channel=48)
    assert n_params(mixer) == wavemix_params(64, 2, 48, levels)
    ff_names = ["feedforward"] if levels == 1 else [f"feedforward{j}" for j in range(1, levels + 1)]
    assert [name for name, _ in mixer.named_children()] == ["reduction", *ff_names]
    assert f"{ff_names[0]}.4.weight" in mixer.state_dict()  # the official Sequential indices
    assert f"{ff_names[0]}.5.running_mean" in mixer.state_dict()


def test_wavemix_param_count_by_hand() -> None:
    # dim 64, mult 2, ff_channel 48, one level: 1040 + 8320 + 6192 + 49216 + 128
    assert n_params(build("token_mixer", "wavelet", 64, mult=2, ff_channel=48)) == 64896
    # ff_channel defaults to dim: 1040 + 8320 + (128*64+64) + (64*64*16+64) + 128
    assert n_params(build("token_mixer", "wavelet", 64)) == 83344


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_wavemix_shapes_and_gradients(levels: int) -> None:
    mixer = build("token_mixer", "wavelet", 32, levels=levels, dropout=0.1).train()
    x = torch.randn(2, 32, 16, 8, requires_grad=True)
    out = mixer(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_wavemix_matches_its_equations() -> None:
    """levels=2 by hand: reduction, pyramid, coarse feedforward, concatenation, fine feedforward."""
    mixer = build("token_mixer", "wavelet", 16, levels=2).eval()
    x = torch.randn(1, 16, 8, 8)
    level1, level2 = haar_subbands(mixer.reduction(x), 2)
    coarse = mixer.feedforward2(level2)
    assert coarse.shape == (1, 8, 4, 4)
    assert torch.equal(mixer(x), mixer.feedforward1(torch.cat([level1, coarse], dim=1)))


def recipe(img_size: int, dim: int, token_mixer) -> dict:
    return {"name": "t", "img_size": img_size, "num_classes": 10,
            "stem": {"type": "conv", "kernel_size": 4, "stride": 4, "padding": 0},
            "stages": [{"depth": 1, "dim": dim, "norm": None, "channel_mixer": None, "token_mixer": token_mixer}]}


def test_wavemix_rejects_a_7x7_map() -> None:
    with pytest.raises(metablocks.RecipeError) as err:
        metablocks.build_model(recipe(28, 64, {"type": "wavelet", "levels": 1}))
    message = str(err.value)
    assert "stages[0].token_mixer" in message
    assert "7x7 map" in message and "divisible by 2" in message


def test_wavemix_checks_levels_and_dim() -> None:
    with pytest.raises(metablocks.RecipeError) as err:
        metablocks.build_model(recipe(48, 62, {"type": "wavelet", "levels": 3}))  # 12x12 map: 12 % 8 != 0
    message = str(err.value)
    assert "2 problems" in message
    assert "divisible by 8; got a 12x12 map" in message
    assert "dim=62 must be divisible by 4" in message
    model = metablocks.build_model(recipe(48, 64, {"type": "wavelet", "levels": 2})).eval()  # 12 % 4 == 0
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


# ------------------------------------------------------------------------------------------------ criss-cross (CCNet)

def criss_cross(dim: int = 16, *, gamma: float = 0.5, **fields) -> CrissCrossAttention:
    """A criss-cross mixer in float64 with hand-set weights: a fixed generator, and gamma set away from 0."""
    module = build("token_mixer", "criss_cross", dim, **fields).double()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        module.gamma.fill_(gamma)
    return module


def dependence(module: torch.nn.Module, height: int, width: int, dim: int) -> torch.Tensor:
    """(H, W, H, W) boolean: does output position p depend on input position s (any channel)?

    One backward pass: the batch holds H*W copies of one input, copy b back-propagates only from position b.
    """
    x = torch.randn(1, dim, height, width, dtype=torch.float64).expand(height * width, -1, -1, -1).clone()
    x.requires_grad_(True)
    out = module(x)  # (HW, C, H, W)
    pick = torch.eye(height * width, dtype=torch.float64).reshape(height * width, 1, height, width)
    weights = torch.randn(1, dim, 1, 1, dtype=torch.float64)  # a random mix of channels: no accidental cancelling
    (out * pick * weights).sum().backward()
    return (x.grad.abs().sum(dim=1) > 0).reshape(height, width, height, width)


def test_one_pass_depends_exactly_on_row_and_column() -> None:
    height, width = 4, 5
    seen = dependence(criss_cross(recurrence=1), height, width, 16)
    for h, w in itertools.product(range(height), range(width)):
        expected = torch.zeros(height, width, dtype=torch.bool)
        expected[h, :] = True
        expected[:, w] = True
        assert torch.equal(seen[h, w], expected), (h, w)


def test_two_passes_see_the_whole_map() -> None:
    assert bool(dependence(criss_cross(recurrence=2), 4, 5, 16).all())


def test_attention_covers_h_plus_w_minus_1_positions_and_sums_to_1() -> None:
    module = criss_cross()
    height, width = 3, 4
    attn = module.attention_map(torch.randn(2, 16, height, width, dtype=torch.float64))
    assert attn.shape == (2, height, width, height + width)
    assert torch.allclose(attn.sum(-1), torch.ones(2, height, width, dtype=torch.float64), atol=1e-12)
    for h in range(height):
        assert bool((attn[:, h, :, h] == 0).all())  # the self position is counted in the row part only
    assert bool(((attn > 0).sum(-1) == height + width - 1).all())


def naive_criss_cross(module: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """A(x) with explicit loops over positions: softmax over {(g, w): g != h} + {(h, u)} of q.k, then sum a * v."""
    q, k, v = module.query_conv(x)[0], module.key_conv(x)[0], module.value_conv(x)[0]
    _, height, width = v.shape
    out = torch.zeros_like(v)
    for h in range(height):
        for w in range(width):
            places = [(g, w) for g in range(height) if g != h] + [(h, u) for u in range(width)]
            energies = torch.stack([q[:, h, w] @ k[:, g, u] for g, u in places])
            weights = torch.softmax(energies, dim=0)
            out[:, h, w] = sum(a * v[:, g, u] for a, (g, u) in zip(weights, places))
    return out[None]


@pytest.mark.parametrize("recurrence", [1, 2])
def test_equal_to_a_naive_loop_reference(recurrence: int) -> None:
    official = criss_cross(recurrence=recurrence, residual=True)
    ours = criss_cross(recurrence=recurrence, residual=False)
    x = torch.randn(1, 16, 3, 4, dtype=torch.float64)
    y = x
    for _ in range(recurrence):  # the official module applied R times: y + gamma * A(y)
        y = y + 0.5 * naive_criss_cross(official, y)
    assert (official(x) - y).abs().max().item() <= 1e-6
    assert (ours(x) - (y - x)).abs().max().item() <= 1e-6
    if recurrence == 1:
        assert torch.equal(ours(x), 0.5 * official.criss_cross(x))


def test_equal_to_masked_full_attention() -> None:
    """Criss-cross = full attention over H*W tokens restricted to row(p) | col(p) (each position once), unscaled."""
    module = criss_cross(recurrence=1)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    height, width = 5, 6
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    mask = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])  # (HW, HW)
    tokens = lambda t: t.flatten(2).transpose(1, 2)  # (B, HW, C)
    out = F.scaled_dot_product_attention(tokens(module.query_conv(x)), tokens(module.key_conv(x)),
                                         tokens(module.value_conv(x)), attn_mask=mask, scale=1.0)
    expected = out.transpose(1, 2).reshape(2, 16, height, width)
    assert torch.allclose(module.criss_cross(x), expected, atol=1e-10)


def test_criss_cross_param_count_and_init() -> None:
    dim = 64
    module = build("token_mixer", "criss_cross", dim)
    qk = dim // 8
    assert n_params(module) == 2 * (dim * qk + qk) + dim * dim + dim + 1 == 5201
    assert [n for n, _ in module.named_parameters()] == ["gamma", "query_conv.weight", "query_conv.bias",
                                                          "key_conv.weight", "key_conv.bias", "value_conv.weight",
                                                          "value_conv.bias"]
    x = torch.randn(2, dim, 6, 7)
    assert module.gamma.item() == 0.0
    assert torch.equal(module(x), torch.zeros_like(x))  # gamma = 0: no update, our block starts as the identity
    residual = build("token_mixer", "criss_cross", dim, residual=True)
    assert torch.equal(residual(x), x)  # the official module at initialisation


def test_criss_cross_checks_dim() -> None:
    with pytest.raises(metablocks.RecipeError) as err:
        metablocks.build_model(recipe(32, 4, {"type": "criss_cross"}))
    assert "stages[0].token_mixer" in str(err.value) and "dim=4 is smaller than reduction=8" in str(err.value)


# ---------------------------------------------------------------------------------------------------------- both

@pytest.mark.parametrize("token_mixer", [{"type": "wavelet", "levels": 2}, "criss_cross"])
def test_registered_and_usable_in_a_block(token_mixer) -> None:
    names = metablocks.list_components("token_mixer")
    assert "wavelet" in names and "criss_cross" in names
    block = metablocks.MetaFormerBlock(dim=64, token_mixer=token_mixer, resolution=(8, 8))
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    out = block(x)
    assert out.shape == (2, 64, 8, 8)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    mixer_grads = [p.grad for p in block.token_mixer.parameters()]
    assert all(g is not None for g in mixer_grads)
