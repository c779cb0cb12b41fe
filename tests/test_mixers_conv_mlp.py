"""Token mixers random (RandFormer), dwconv (ConvNeXt / RepLKNet), token_mlp (MLP-Mixer), raft (RaftMLP) and the
convglu channel mixer (TransNeXt): parameter counts against the papers, hand-computed outputs, locality, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metablocks
from metablocks import RecipeError
from metablocks.components.channel_mixers.convglu import ConvGlu
from metablocks.components.token_mixers.dwconv import DWConv
from metablocks.components.token_mixers.random import RandomMixing
from metablocks.components.token_mixers.raft import RaftTokenMixer
from metablocks.components.token_mixers.token_mlp import TokenMlp
from metablocks.registry import Context, get


def learnable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if not p.requires_grad)


def build(kind: str, name: str, dim: int, resolution: tuple[int, int] | None = None, **fields) -> nn.Module:
    config = get(kind, name).model_validate({"type": name, **fields})
    return config.build(Context(dim, resolution=resolution, layout="channels_last"))


# ---------------------------------------------------------------- random (RandFormer) and IdentityFormer
# MetaFormer Baselines, Table: IdentityFormer params; RandFormer = the same learnable params + a frozen matrix.
# Exact counts measured here; the frozen part is sum over random blocks of (H*W)^2: 14x14 in stage 2, 7x7 in stage 3.
SIZES = {  # size: (learnable, paper M, frozen, paper frozen M, stage-2/3 depths)
    "s12": (11_891_712, 11.9, 235_298, 0.2, (6, 2)),
    "s24": (21_341_464, 21.3, 470_596, 0.5, (12, 4)),
    "s36": (30_791_216, 30.8, 705_894, 0.7, (18, 6)),
    "m36": (56_077_168, 56.1, 705_894, 0.7, (18, 6)),
    "m48": (73_346_056, 73.3, 941_192, 0.9, (24, 8)),
}


@pytest.mark.parametrize("size", list(SIZES))
def test_identityformer_and_randformer_params_match_the_paper(size: str) -> None:
    n_learn, paper_learn, n_frozen, paper_frozen, (d2, d3) = SIZES[size]
    identity = metablocks.create_model(f"identityformer_{size}")
    rand = metablocks.create_model(f"randformer_{size}")
    assert learnable(identity) == n_learn and frozen(identity) == 0
    assert learnable(rand) == n_learn
    assert frozen(rand) == n_frozen == d2 * 196**2 + d3 * 49**2
    assert round(n_learn / 1e6, 1) == paper_learn == identity.recipe.paper.params_m
    assert round(n_frozen / 1e6, 1) == paper_frozen
    # the paper lists RandFormer's learnable and frozen parameters apart; the recipe holds the learnable part
    assert rand.recipe.paper.counts == "trainable" and rand.recipe.paper.params_m == paper_learn
    names = [n for n, p in rand.named_parameters() if not p.requires_grad]
    assert len(names) == d2 + d3 and all(n.endswith("token_mixer.random_matrix") for n in names)


def test_random_matrix_is_a_frozen_row_stochastic_parameter() -> None:
    mixer = build("token_mixer", "random", 8, (7, 9))
    matrix = dict(mixer.named_parameters())["random_matrix"]
    assert matrix.shape == (63, 63) and not matrix.requires_grad
    assert torch.allclose(matrix.sum(-1), torch.ones(63), atol=1e-6)
    assert (matrix > 0).all()
    assert "random_matrix" in mixer.state_dict()


def test_random_mixing_keeps_a_constant_map_and_matches_the_einsum() -> None:
    mixer = build("token_mixer", "random", 3, (4, 5))
    constant = torch.tensor([2.0, -1.5, 7.0]).expand(2, 4, 5, 3)  # (B, H, W, C), one constant per channel
    assert torch.allclose(mixer(constant), constant, atol=1e-5)
    x = torch.randn(2, 4, 5, 3)
    expected = torch.einsum("mn,bnc->bmc", mixer.random_matrix, x.reshape(2, 20, 3)).reshape(2, 4, 5, 3)
    assert torch.allclose(mixer(x), expected, atol=1e-6)


def test_random_mixing_needs_a_resolution() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.MetaFormerBlock(dim=64, token_mixer="random")
    assert "token_mixer 'random': needs the map's resolution to size its N x N mixing matrix" in str(err.value)


def test_randformer_rebuilds_for_another_img_size_and_rejects_other_inputs() -> None:
    model = metablocks.build_model("randformer_s12", img_size=96, num_classes=5).eval()
    assert model.stages[2].blocks[0].token_mixer.random_matrix.shape == (36, 36)  # 96/16 = 6: 6x6 tokens
    assert model.stages[3].blocks[0].token_mixer.random_matrix.shape == (9, 9)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5)
    with pytest.raises(ValueError, match="mixes over a fixed 96x96 token grid; got a 64x64 input"):
        model(torch.randn(1, 3, 64, 64))
    block = metablocks.MetaFormerBlock(dim=16, token_mixer="random", resolution=(6, 6))
    with pytest.raises(ValueError, match="built for a fixed 6x6 token grid; got a 5x6 map"):
        block(torch.randn(1, 16, 5, 6))


# ---------------------------------------------------------------- dwconv (ConvNeXt / RepLKNet)
def test_dwconv_is_importable_with_its_keyword_signature() -> None:
    conv = DWConv(32, kernel_size=7, bias=True)
    assert isinstance(conv.conv, nn.Conv2d) and conv.conv.groups == 32 and conv.conv.padding == (3, 3)
    assert sum(p.numel() for p in conv.parameters()) == 32 * 49 + 32
    assert sum(p.numel() for p in DWConv(32, kernel_size=5, bias=False).parameters()) == 32 * 25
    lk = DWConv(32, kernel_size=31, small_kernel=5)
    assert {n for n, _ in lk.named_children()} == {"large", "small"}
    assert isinstance(lk.large.conv, nn.Conv2d) and isinstance(lk.large.bn, nn.BatchNorm2d)
    assert lk.large.conv.bias is None and lk.small.conv.kernel_size == (5, 5)
    assert sum(p.numel() for p in lk.parameters()) == 32 * 31**2 + 32 * 5**2 + 2 * 2 * 32  # convs + 2 BN affine


def test_dwconv_3x3_by_hand() -> None:
    conv = DWConv(2, kernel_size=3)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 0] = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])  # Laplacian
        conv.conv.weight[1, 0, 1, 2] = 1.0  # channel 1: y[i, j] = x[i, j + 1]
        conv.conv.bias.copy_(torch.tensor([0.0, 0.5]))
    image = torch.arange(16.0).reshape(4, 4)
    y = conv(torch.stack([image, image])[None])[0]
    laplacian = torch.tensor([[5.0, 3.0, 2.0, -3.0],  # zero padding: e.g. (0, 0): 1 + 4 - 4*0 = 5
                              [-3.0, 0.0, 0.0, -8.0],
                              [-7.0, 0.0, 0.0, -12.0],
                              [-27.0, -17.0, -18.0, -35.0]])
    shifted = torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0], [9.0, 10.0, 11.0, 0.0], [13.0, 14.0, 15.0, 0.0]])
    assert torch.equal(y[0], laplacian)
    assert torch.equal(y[1], shifted + 0.5)


@pytest.mark.parametrize("kernel_size,small_kernel", [(13, 5), (31, 3), (7, 1)])
def test_dwconv_reparameterize_keeps_the_function(kernel_size: int, small_kernel: int) -> None:
    conv = DWConv(16, kernel_size=kernel_size, small_kernel=small_kernel)
    with torch.no_grad():
        for branch in (conv.large, conv.small):
            branch.bn.running_mean.normal_()
            branch.bn.running_var.uniform_(0.5, 2.0)
            branch.bn.weight.normal_()
            branch.bn.bias.normal_()
    conv.eval()
    x = torch.randn(2, 16, 20, 17)
    before = conv(x)
    conv.reparameterize()
    assert {n for n, _ in conv.named_children()} == {"conv"}
    assert not hasattr(conv, "large") and not hasattr(conv, "small")
    assert set(conv.state_dict()) == {"conv.weight", "conv.bias"}
    assert conv.conv.weight.shape == (16, 1, kernel_size, kernel_size)
    assert (conv(x) - before).abs().max().item() <= 1e-5
    conv.reparameterize()  # a second call is a no-op
    assert (conv(x) - before).abs().max().item() <= 1e-5


def test_dwconv_even_kernel_is_a_recipe_error_naming_the_field() -> None:
    recipe = metablocks.load_recipe("identityformer_s12").dump()
    recipe["stages"][0]["token_mixer"] = {"type": "dwconv", "kernel_size": 6}
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe(recipe)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].path == "stages[0].token_mixer"
    assert "stages[0].token_mixer: token_mixer 'dwconv': kernel_size must be odd to keep the map size, got 6" in str(err.value)


@pytest.mark.parametrize("fields,message", [
    ({"kernel_size": 33}, "kernel_size must be between 3 and 31, got 33"),
    ({"kernel_size": 1}, "kernel_size must be between 3 and 31, got 1"),
    ({"kernel_size": 7, "small_kernel": 4}, "small_kernel must be odd to keep the map size, got 4"),
    ({"kernel_size": 7, "small_kernel": 7}, "small_kernel must be smaller than kernel_size=7, got 7"),
])
def test_dwconv_checks(fields: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        metablocks.MetaFormerBlock(dim=8, token_mixer={"type": "dwconv", **fields})


# ---------------------------------------------------------------- token_mlp (MLP-Mixer)
def test_token_mlp_shape_and_hidden_width_from_channels() -> None:
    mixer = build("token_mixer", "token_mlp", 64, (7, 9))
    assert mixer.fc1.weight.shape == (32, 63) and mixer.fc2.weight.shape == (63, 32)  # int(0.5 * 64) hidden
    assert mixer(torch.randn(2, 7, 9, 64)).shape == (2, 7, 9, 64)
    b16 = build("token_mixer", "token_mlp", 768, (14, 14))  # Mixer-B/16: 384 hidden for 196 tokens
    assert b16.fc1.weight.shape == (384, 196)
    assert build("token_mixer", "token_mlp", 64, (7, 9), hidden_dim=100).fc1.weight.shape == (100, 63)


def test_token_mlp_by_hand() -> None:
    mixer = build("token_mixer", "token_mlp", 3, (2, 2), hidden_dim=4, act="identity")
    with torch.no_grad():
        mixer.fc1.weight.copy_(torch.eye(4))
        mixer.fc1.bias.zero_()
        mixer.fc2.weight.copy_(torch.eye(4).flip(0))  # token m <- token 3 - m: (h, w) <- (1 - h, 1 - w)
        mixer.fc2.bias.copy_(torch.tensor([10.0, 20.0, 30.0, 40.0]))
    x = torch.arange(12.0).reshape(1, 2, 2, 3)  # (B, H, W, C)
    expected = torch.tensor([[[[9.0, 10.0, 11.0], [6.0, 7.0, 8.0]], [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]]])
    expected += torch.tensor([[10.0, 20.0], [30.0, 40.0]])[None, :, :, None]
    assert torch.equal(mixer(x), expected)


def test_token_mlp_mixes_tokens_not_channels() -> None:
    mixer = build("token_mixer", "token_mlp", 16, (5, 6))
    x = torch.randn(2, 5, 6, 16)
    perm = torch.randperm(16)
    assert torch.allclose(mixer(x[..., perm]), mixer(x)[..., perm], atol=1e-6)
    y = mixer(x)
    x2 = x.clone()
    x2[..., 3] += 1.0  # one channel changes: only that channel's output changes
    changed = (mixer(x2) - y).abs().amax((0, 1, 2)) > 0
    assert changed.tolist() == [c == 3 for c in range(16)]


def test_token_mlp_block_equals_timm_mixer_block() -> None:
    pytest.importorskip("timm")
    from timm.models.mlp_mixer import MixerBlock

    theirs = MixerBlock(48, 7 * 7).eval()
    ours = metablocks.MetaFormerBlock(dim=48, resolution=(7, 7), norm="layernorm", token_mixer="token_mlp",
                                      channel_mixer="mlp").eval()
    renames = {"mlp_tokens.": "token_mixer.", "mlp_channels.": "channel_mixer."}
    weights = {}
    for key, value in theirs.state_dict().items():
        for old, new in renames.items():
            key = key.replace(old, new)
        weights[key] = value
    ours.load_state_dict(weights, strict=True)
    x = torch.randn(2, 48, 7, 7)
    expected = theirs(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 48, 7, 7)
    assert (ours(x) - expected).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- raft (RaftMLP)
def raft_params(r: int, e: int, height: int, width: int) -> int:
    """Two MLPs r*L -> e*r*L -> r*L (L = H for the vertical, W for the horizontal), weights and biases."""
    return 2 * e * r**2 * (height**2 + width**2) + (e + 1) * r * (height + width)


@pytest.mark.parametrize("dim,r,e,resolution", [(64, 2, 2, (14, 14)), (96, 4, 3, (6, 8)), (12, 1, 2, (5, 3))])
def test_raft_param_count_and_shape(dim: int, r: int, e: int, resolution: tuple[int, int]) -> None:
    mixer = build("token_mixer", "raft", dim, resolution, raft_size=r, expansion_factor=e)
    assert sum(p.numel() for p in mixer.parameters()) == raft_params(r, e, *resolution)
    assert mixer.vertical.fc1.weight.shape == (e * r * resolution[0], r * resolution[0])
    assert mixer.horizontal.fc1.weight.shape == (e * r * resolution[1], r * resolution[1])
    assert mixer(torch.randn(2, *resolution, dim)).shape == (2, *resolution, dim)
    half = build("token_mixer", "raft", dim, resolution, raft_size=r, expansion_factor=e, axis="vertical")
    assert half.horizontal is None
    assert sum(p.numel() for p in half.parameters()) == 2 * e * r**2 * resolution[0] ** 2 + (e + 1) * r * resolution[0]


def _zero(mlp: nn.Module) -> None:
    with torch.no_grad():
        mlp.fc2.weight.zero_()
        mlp.fc2.bias.zero_()


def test_raft_vertical_mixes_only_within_a_column_and_a_raft() -> None:
    mixer = build("token_mixer", "raft", 12, (6, 5), raft_size=3)
    _zero(mixer.horizontal)
    x = torch.randn(2, 6, 5, 12)
    y = mixer(x)
    x2 = x.clone()
    x2[:, :, 2, :] += torch.randn(2, 6, 12)  # change column 2 only
    changed_cols = (mixer(x2) - y).abs().amax((0, 1, 3)) > 0
    assert changed_cols.tolist() == [False, False, True, False, False]
    x3 = x.clone()
    x3[:, 4, 1, 5] += 1.0  # one channel at one place: rafts are channels C/r = 4 apart, as the official (chw co)
    diff = (mixer(x3) - y).abs()
    assert (diff.amax((0, 1, 3)) > 0).tolist() == [False, True, False, False, False]  # only that column
    assert (diff.amax((0, 1, 2)) > 0).tolist() == [c % 4 == 1 for c in range(12)]  # channels 1, 5, 9
    assert (diff.amax((0, 2, 3)) > 0).all()  # every row of that column


def test_raft_horizontal_mixes_only_within_a_row() -> None:
    mixer = build("token_mixer", "raft", 8, (4, 7), raft_size=2)
    _zero(mixer.vertical)
    x = torch.randn(2, 4, 7, 8)
    y = mixer(x)
    x2 = x.clone()
    x2[:, 1] += torch.randn(2, 7, 8)  # change row 1 only
    changed_rows = (mixer(x2) - y).abs().amax((0, 2, 3)) > 0
    assert changed_rows.tolist() == [False, True, False, False]


def test_raft_block_equals_the_official_serial_mixing() -> None:
    """With identity norms the official x_v = x + V(x); x_h = x_v + H(x_v) over "b (h w) (chw co)" tokens."""
    dim, r, height, width = 8, 2, 4, 6
    block = metablocks.MetaFormerBlock(dim=dim, resolution=(height, width), norm=None, channel_mixer=None,
                                       token_mixer={"type": "raft", "raft_size": r})
    mixer = block.token_mixer
    x = torch.randn(2, dim, height, width)
    tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C), C = (chw co): chw = r outer, co = C/r inner
    g = dim // r

    def vertical(t: torch.Tensor) -> torch.Tensor:  # b (h w) (chw co) -> b (co w) (chw h), MLP, back
        t = t.reshape(2, height, width, r, g).permute(0, 4, 2, 3, 1).reshape(2, g * width, r * height)
        t = mixer.vertical.fc2(F.gelu(mixer.vertical.fc1(t)))
        return t.reshape(2, g, width, r, height).permute(0, 4, 2, 3, 1).reshape(2, height * width, dim)

    def horizontal(t: torch.Tensor) -> torch.Tensor:  # b (h w) (chw co) -> b (co h) (chw w), MLP, back
        t = t.reshape(2, height, width, r, g).permute(0, 4, 1, 3, 2).reshape(2, g * height, r * width)
        t = mixer.horizontal.fc2(F.gelu(mixer.horizontal.fc1(t)))
        return t.reshape(2, g, height, r, width).permute(0, 2, 4, 3, 1).reshape(2, height * width, dim)

    x_v = tokens + vertical(tokens)
    x_h = x_v + horizontal(x_v)
    expected = x_h.transpose(1, 2).reshape(2, dim, height, width)
    assert (block(x) - expected).abs().max().item() <= 1e-5


def test_raft_axis_blocks_reproduce_the_official_three_branch_block() -> None:
    """Official RaftMLP block: x += V(LN(x)); x += H(LN(x)); x += MLP(LN(x)). Two of our blocks (vertical with no
    channel mixer, then horizontal with the MLP), as a recipe cycling per-block lists builds them, compute the same."""
    dim, r, height, width = 8, 2, 4, 6
    first = metablocks.MetaFormerBlock(dim=dim, resolution=(height, width), norm={"type": "layernorm", "eps": 1e-5},
                                       token_mixer={"type": "raft", "raft_size": r, "axis": "vertical"}, channel_mixer=None)
    second = metablocks.MetaFormerBlock(dim=dim, resolution=(height, width), norm={"type": "layernorm", "eps": 1e-5},
                                        token_mixer={"type": "raft", "raft_size": r, "axis": "horizontal"}, channel_mixer="mlp")
    with torch.no_grad():
        for norm in (first.norm1, second.norm1, second.norm2):
            norm.weight.normal_()
            norm.bias.normal_()
    g = dim // r
    ln = lambda t, norm: F.layer_norm(t, (dim,), norm.weight, norm.bias, 1e-5)  # noqa: E731
    vmlp, hmlp, cmlp = first.token_mixer.vertical, second.token_mixer.horizontal, second.channel_mixer

    def vertical(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(2, height, width, r, g).permute(0, 4, 2, 3, 1).reshape(2, g * width, r * height)
        t = vmlp.fc2(F.gelu(vmlp.fc1(t)))
        return t.reshape(2, g, width, r, height).permute(0, 4, 2, 3, 1).reshape(2, height * width, dim)

    def horizontal(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(2, height, width, r, g).permute(0, 4, 1, 3, 2).reshape(2, g * height, r * width)
        t = hmlp.fc2(F.gelu(hmlp.fc1(t)))
        return t.reshape(2, g, height, r, width).permute(0, 2, 4, 3, 1).reshape(2, height * width, dim)

    x = torch.randn(2, dim, height, width)
    t = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
    t = t + vertical(ln(t, first.norm1))
    t = t + horizontal(ln(t, second.norm1))
    t = t + cmlp.fc2(F.gelu(cmlp.fc1(ln(t, second.norm2))))
    expected = t.transpose(1, 2).reshape(2, dim, height, width)
    assert (second(first(x)) - expected).abs().max().item() <= 1e-5


def test_raft_checks() -> None:
    with pytest.raises(RecipeError, match="raft_size=3 does not divide dim=64"):
        metablocks.MetaFormerBlock(dim=64, token_mixer={"type": "raft", "raft_size": 3}, resolution=(14, 14))
    with pytest.raises(RecipeError, match="needs the map's resolution to size its vertical"):
        metablocks.MetaFormerBlock(dim=64, token_mixer="raft")


# ---------------------------------------------------------------- convglu (TransNeXt)
@pytest.mark.parametrize("dim,ratio,hidden", [(64, 4.0, 170), (48, 8.0, 256), (96, 3.0, 192)])
def test_convglu_param_count_and_shape(dim: int, ratio: float, hidden: int) -> None:
    mlp = build("channel_mixer", "convglu", dim, ratio=ratio)
    assert hidden == int(2 * int(ratio * dim) / 3)
    assert mlp.fc1.weight.shape == (2 * hidden, dim) and mlp.dwconv.weight.shape == (hidden, 1, 3, 3)
    expected = (dim * 2 * hidden + 2 * hidden) + (hidden * 9 + hidden) + (hidden * dim + dim)
    assert sum(p.numel() for p in mlp.parameters()) == expected
    assert mlp(torch.randn(2, 5, 7, dim)).shape == (2, 5, 7, dim)


def test_convglu_zero_gate_gives_only_the_output_bias() -> None:
    mlp = build("channel_mixer", "convglu", 32, ratio=4.0)
    hidden = mlp.dwconv.weight.shape[0]
    with torch.no_grad():
        mlp.fc1.weight[hidden:].zero_()  # the v half of fc1
        mlp.fc1.bias[hidden:].zero_()
        mlp.fc2.bias.normal_()
    y = mlp(torch.randn(2, 6, 6, 32))
    assert torch.equal(y, mlp.fc2.bias.expand(2, 6, 6, 32))
    with torch.no_grad():
        mlp.fc2.bias.zero_()
    assert torch.equal(mlp(torch.randn(2, 6, 6, 32)), torch.zeros(2, 6, 6, 32))


def test_convglu_matches_the_official_token_computation() -> None:
    """Official: x, v = fc1(x).chunk(2); x = act(dwconv(x as B,C,H,W)) * v; fc2 — on (B, N, C) tokens."""
    mlp = build("channel_mixer", "convglu", 24, ratio=4.0)
    x = torch.randn(2, 5, 7, 24)
    tokens = x.reshape(2, 35, 24)
    a, v = mlp.fc1(tokens).chunk(2, dim=-1)
    a = F.conv2d(a.transpose(1, 2).reshape(2, -1, 5, 7), mlp.dwconv.weight, mlp.dwconv.bias, padding=1,
                 groups=a.shape[-1]).flatten(2).transpose(1, 2)
    expected = mlp.fc2(F.gelu(a) * v).reshape(2, 5, 7, 24)
    assert (mlp(x) - expected).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- all of them
def test_components_are_registered() -> None:
    assert {"random", "dwconv", "token_mlp", "raft"} <= set(metablocks.list_components("token_mixer"))
    assert "convglu" in metablocks.list_components("channel_mixer")
    assert get("token_mixer", "random").module is RandomMixing
    assert get("token_mixer", "token_mlp").module is TokenMlp
    assert get("token_mixer", "raft").module is RaftTokenMixer
    assert get("token_mixer", "dwconv").module is DWConv
    assert get("channel_mixer", "convglu").module is ConvGlu


@pytest.mark.parametrize("config", [
    {"token_mixer": "random"},
    {"token_mixer": "dwconv"},
    {"token_mixer": {"type": "dwconv", "kernel_size": 31, "small_kernel": 5}},
    {"token_mixer": "token_mlp"},
    {"token_mixer": "raft"},
    {"token_mixer": "attention", "channel_mixer": "convglu"},
    {"token_mixer": "dwconv", "channel_mixer": "convglu"},
], ids=["random", "dwconv", "dwconv_lk", "token_mlp", "raft", "convglu", "dwconv+convglu"])
def test_block_forward_backward(config: dict) -> None:
    block = metablocks.MetaFormerBlock(dim=64, resolution=(14, 14), **config)
    x = torch.randn(2, 64, 14, 14, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 64, 14, 14) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert name == "token_mixer.random_matrix" and p.grad is None
