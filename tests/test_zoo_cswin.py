"""CSWin Transformer T/S/B as recipes (timm has no CSWin): parameters equal the official structure's count by formula
and the paper's table, MACs within 3% of the paper, the stripe partition and the cross-shaped receptive field by hand,
the attention equal to a slow per-stripe reference, other resolutions and the error for a stripe that does not fit."""
import pytest
import torch

import metablocks
from metablocks.components.token_mixers.cswin_attention import CSWinAttentionConfig, stripes
from metablocks.recipe.errors import RecipeError
from metablocks.recipe.loader import load_recipe
from metablocks.registry import Context

SIZES = {  # recipe: (embed dim, depths, parameters we measured, paper (params_m, macs_g, top1))
    "cswin_t": (64, [1, 2, 21, 1], 22_320_552, (23, 4.3, 82.7)),
    "cswin_s": (64, [2, 4, 32, 2], 34_643_304, (35, 6.9, 83.6)),
    "cswin_b": (96, [2, 4, 32, 2], 77_382_184, (78, 15.0, 84.2)),
}
SLOW = [pytest.param("cswin_s", marks=pytest.mark.slow), pytest.param("cswin_b", marks=pytest.mark.slow)]


def official_params(embed_dim: int, depths: list[int], num_classes: int = 1000) -> int:
    """The parameter count of microsoft/CSWin-Transformer models/cswin.py, term by term."""
    dims = [embed_dim * 2 ** i for i in range(4)]
    total = 3 * 7 * 7 * embed_dim + embed_dim + 2 * embed_dim  # stage1_conv_embed: conv 7x7 s4 + LayerNorm
    for i, (c, depth) in enumerate(zip(dims, depths)):
        if i > 0:
            total += dims[i - 1] * c * 9 + c + 2 * c  # Merge_Block: conv 3x3 s2 (bias) + LayerNorm
        block = (2 * c  # norm1
                 + 3 * c * c + 3 * c  # qkv (bias)
                 + 9 * c + c  # LePE get_v: depthwise 3x3 with bias, over all channels of all branches
                 + c * c + c  # proj
                 + 2 * c  # norm2
                 + c * 4 * c + 4 * c + 4 * c * c + c)  # mlp fc1, fc2
        total += depth * block
    return total + 2 * dims[-1] + dims[-1] * num_classes + num_classes  # final norm, head


def count_gmacs(model: torch.nn.Module) -> float:
    """GMACs at 224 through metablocks.analysis (fvcore with our SDPA handle)."""
    from metablocks.analysis import count_macs

    return count_macs(model).total / 1e9


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def cswin_t():
    return metablocks.create_model("cswin_t").eval()


@pytest.mark.parametrize("name", ["cswin_t", *SLOW])
def test_params_equal_official_structure_and_paper(name: str, cswin_t) -> None:
    embed_dim, depths, params, (paper_params, _, _) = SIZES[name]
    model = cswin_t if name == "cswin_t" else metablocks.create_model(name)
    assert n_params(model) == official_params(embed_dim, depths) == params
    # the paper rounds: S 34.6M -> 35M, B 77.4M -> 78M; T is 22.3M in the official code, listed as 23M
    assert abs(params / 1e6 - paper_params) < 1.0


def test_recipes_record_the_paper() -> None:
    for name, (embed_dim, depths, _, paper) in SIZES.items():
        recipe = load_recipe(name)
        assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == paper
        assert [s.depth for s in recipe.stages] == depths and recipe.stages[0].dim == embed_dim
        assert [s.token_mixer[0].split_size for s in recipe.stages] == [1, 2, 7, None]
        assert recipe.timm_name is None  # timm does not implement CSWin


def test_heads_per_stage(cswin_t) -> None:
    heads = [(s.blocks[0].token_mixer.branches, s.blocks[0].token_mixer.heads_per_branch) for s in cswin_t.stages]
    assert heads == [(2, 1), (2, 2), (2, 4), (1, 16)]  # heads 2, 4, 8, 16: half per stripe direction, all at the end
    base = load_recipe("cswin_b")
    assert [s.token_mixer[0].heads(s.dim)[0] for s in base.stages] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["cswin_t", *SLOW])
def test_macs_match_the_paper(name: str, cswin_t) -> None:
    model = cswin_t if name == "cswin_t" else metablocks.create_model(name)
    paper = SIZES[name][3][1]
    gmacs = count_gmacs(model)
    assert abs(gmacs - paper) / paper <= 0.03, (name, gmacs, paper)


def test_stripe_partition_by_hand() -> None:
    """A 4x4 map numbered row-major: vertical stripes of width 2 are the column pairs, horizontal ones the row pairs."""
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    vertical = stripes(x, (4, 2))[..., 0].tolist()
    assert vertical == [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]]
    horizontal = stripes(x, (2, 4))[..., 0].tolist()
    assert horizontal == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]]


def test_cross_shaped_receptive_field() -> None:
    """Changing one token changes exactly the outputs in its cross: its column stripe and its row stripe."""
    mixer = CSWinAttentionConfig(split_size=2, num_heads=2).build(Context(8, resolution=(8, 8))).eval()
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[0, 5, 2] += 1.0  # row 5 (row stripe 4-5), column 2 (column stripe 2-3)
    with torch.no_grad():
        changed = (mixer(x) - mixer(y)).abs().amax(-1)[0] > 1e-6  # (8, 8)
    rows, cols = torch.arange(8)[:, None], torch.arange(8)[None, :]
    cross = (rows // 2 == 5 // 2) | (cols // 2 == 2 // 2)
    assert torch.equal(changed, cross)


def test_full_attention_mixes_everything() -> None:
    mixer = CSWinAttentionConfig(split_size=None, num_heads=2).build(Context(8, resolution=(6, 6))).eval()
    x = torch.randn(1, 6, 6, 8)
    y = x.clone()
    y[0, 0, 0] += 1.0
    with torch.no_grad():
        assert ((mixer(x) - mixer(y)).abs().amax(-1) > 1e-6).all()


def reference_stripe_attention(mixer, x: torch.Tensor) -> torch.Tensor:
    """The official algorithm, slowly: for each branch, loop over its stripes; softmax(q k^T / sqrt(d)) v plus a
    depthwise conv of v zero-padded at the stripe's border (LePE); concatenate the branches; project."""
    b, h, w, c = x.shape
    qkv = mixer.qkv(x).reshape(b, h, w, 3, c)
    half = c // mixer.branches
    heads = mixer.heads_per_branch
    outs = []
    for branch in range(mixer.branches):
        q, k, v = (qkv[..., i, branch * half:(branch + 1) * half] for i in range(3))
        out = torch.zeros(b, h, w, half)
        s = mixer.split_size
        if s is None:
            windows = [(slice(None), slice(None))]
        elif branch == 0:  # vertical stripes: full height, s columns
            windows = [(slice(None), slice(j, j + s)) for j in range(0, w, s)]
        else:  # horizontal stripes: s rows, full width
            windows = [(slice(i, i + s), slice(None)) for i in range(0, h, s)]
        for rs, cs in windows:
            qw, kw, vw = (t[:, rs, cs] for t in (q, k, v))  # (B, sh, sw, half)
            sh, sw = qw.shape[1:3]
            lepe = mixer.get_v[branch](vw.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, sh * sw, heads, -1)
            qh, kh, vh = (t.reshape(b, sh * sw, heads, -1).transpose(1, 2) for t in (qw, kw, vw))
            attn = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)
            res = (attn @ vh).transpose(1, 2) + lepe  # (B, sh*sw, heads, d)
            out[:, rs, cs] = res.reshape(b, sh, sw, half)
        outs.append(out)
    return mixer.proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("split_size", [1, 2, None])
def test_attention_equals_per_stripe_reference(split_size) -> None:
    mixer = CSWinAttentionConfig(split_size=split_size, num_heads=4).build(Context(16, resolution=(4, 6))).eval()
    for conv in mixer.get_v:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 4, 6, 16)
    with torch.no_grad():
        assert torch.allclose(mixer(x), reference_stripe_attention(mixer, x), atol=1e-5)


@pytest.mark.parametrize("size", [224, 112])
def test_forward_backward(size: int, cswin_t) -> None:
    """112: maps 28, 14, 7, 4 -- stripes 1, 2, 7 still divide them; the last stage attends over its 4x4 map."""
    model = metablocks.create_model("cswin_t", img_size=size, num_classes=10) if size != 224 else cswin_t
    model.train()
    x = torch.randn(1, 3, size, size)
    out = model(x)
    assert out.shape == (1, model.num_classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()


def test_stripe_that_does_not_divide_the_map_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("cswin_t", {"img_size": 160})  # maps 40, 20, 10, 5: stripes of 7 do not fit the 10x10 map
    message = str(err.value)
    assert "split_size=7 does not divide the 10x10 map of stage 2" in message
    assert "cswin.yaml:17: stages[2].token_mixer" in message  # the stage_defaults line that set split_size: 7
    assert "stage 1" not in message  # widths 1 and 2 fit the 40x40 and 20x20 maps


def test_odd_head_count_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("cswin_t", {"block.token_mixer.head_dim": 64})  # stage 0: 64 channels = 1 head
    assert "num_heads=1 is odd" in str(err.value)


def test_an_input_the_stripes_do_not_divide_is_told() -> None:
    model = metablocks.create_model("cswin_t").eval()
    with pytest.raises(ValueError, match=r"cswin attention: split_size=2 does not divide this input's 25x25 map"):
        model(torch.randn(1, 3, 200, 200))
