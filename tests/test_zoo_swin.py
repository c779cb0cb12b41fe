"""Swin Transformer T/S/B as recipes: equal to timm (params, strict weight loading, logits), the shift mask and the
relative position index by hand, patch merging's channel order, other resolutions, MACs against the paper."""
import copy

import pytest
import torch

import metablocks
from metablocks.components.token_mixers.window_attention import (WindowAttentionConfig, relative_position_index,
                                                                  shift_mask)
from metablocks.interop.timm import load_timm_state_dict
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context

timm = pytest.importorskip("timm")

SIZES = {  # recipe: (timm name, parameters we measured: equal to timm's)
    "swin_t": ("swin_tiny_patch4_window7_224", 28_288_354),
    "swin_s": ("swin_small_patch4_window7_224", 49_606_258),
    "swin_b": ("swin_base_patch4_window7_224", 87_768_224),
}
SLOW = [pytest.param("swin_s", marks=pytest.mark.slow), pytest.param("swin_b", marks=pytest.mark.slow)]


def count_gmacs(model: torch.nn.Module) -> float:
    """GMACs at 224 through metablocks.analysis (fvcore with our SDPA handle)."""
    from metablocks.analysis import count_macs

    return count_macs(model).total / 1e9


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def pair_t():
    ours = metablocks.create_model("swin_t").eval()
    theirs = timm.create_model("swin_tiny_patch4_window7_224").eval()
    return ours, theirs


@pytest.mark.parametrize("name", ["swin_t", *SLOW])
def test_equal_to_timm(name: str, pair_t) -> None:
    timm_name, params = SIZES[name]
    ours, theirs = pair_t if name == "swin_t" else (metablocks.create_model(name).eval(),
                                                    timm.create_model(timm_name).eval())
    assert ours.recipe.timm_name == timm_name
    assert n_params(ours) == n_params(theirs) == params
    # the buffers timm rebuilds (relative_position_index, attn_mask) are non-persistent here too
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in ours.state_dict())
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-4


def test_recipes_record_the_paper() -> None:
    from metablocks.recipe.loader import load_recipe

    papers = {name: load_recipe(name).paper for name in SIZES}
    assert {n: (p.params_m, p.macs_g, p.top1) for n, p in papers.items()} == {
        "swin_t": (28, 4.5, 81.3), "swin_s": (50, 8.7, 83.0), "swin_b": (88, 15.4, 83.5)}
    assert all(p.title.startswith("Swin Transformer") for p in papers.values())
    assert {name: load_recipe(name).timm_name for name in SIZES} == {n: t for n, (t, _) in SIZES.items()}


def test_stage_alternates_window_and_shifted_window(pair_t) -> None:
    ours, _ = pair_t
    mixers = [(b.token_mixer.window_size, b.token_mixer.shift_size) for b in ours.stages[2].blocks]
    assert mixers == [((7, 7), (0, 0)), ((7, 7), (3, 3))] * 3
    # the last stage's 7x7 map is no larger than the window: one window, no shift, no mask (as timm does)
    last = ours.stages[3].blocks[1].token_mixer
    assert (last.window_size, last.shift_size, last.attn_mask) == ((7, 7), (0, 0), None)


def test_shift_mask_by_hand() -> None:
    """A 14x14 map, window 7, shift 3: four windows. After rolling by -3 the last 3 rows/columns came from the other
    side of the map, so inside the right/bottom windows tokens 0-3 and 4-6 (along that axis) must not see each other."""
    mask = shift_mask((14, 14), (7, 7), (3, 3), -100.0)  # (nW, 49, 49)
    assert mask.shape == (4, 49, 49)
    col, row = torch.arange(49) % 7, torch.arange(49) // 7
    left_band, top_band = col < 4, row < 4
    expect = torch.zeros(4, 49, 49)
    expect[1] = -100.0 * (left_band[:, None] != left_band[None, :])  # top-right window: two column bands
    expect[2] = -100.0 * (top_band[:, None] != top_band[None, :])  # bottom-left window: two row bands
    expect[3] = -100.0 * ((left_band[:, None] != left_band[None, :]) | (top_band[:, None] != top_band[None, :]))
    assert torch.equal(mask, expect)
    assert mask[0].abs().sum() == 0  # the top-left window was not touched by the roll
    # token (0, 0) and token (0, 4) of the top-right window came from columns 7 and 11 -> 0 (wrapped): masked
    assert mask[1, 0, 4] == -100.0 and mask[1, 0, 3] == 0.0


def test_shift_mask_equals_timm() -> None:
    from timm.models.swin_transformer import SwinTransformerBlock

    block = SwinTransformerBlock(96, input_resolution=(28, 28), num_heads=3, window_size=7, shift_size=3)
    ours = WindowAttentionConfig(shift=True).build(Context(96, resolution=(28, 28)))
    assert torch.equal(ours.attn_mask, block.attn_mask)
    assert ours.attn_mask.unique().tolist() == [-100.0, 0.0]


def test_relative_position_index_by_hand() -> None:
    """A 2x2 window: tokens (0,0) (0,1) (1,0) (1,1); index = (dr + 1) * 3 + (dc + 1) for dr, dc in {-1, 0, 1}."""
    assert relative_position_index((2, 2)).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    from timm.models.swin_transformer import get_relative_position_index

    assert torch.equal(relative_position_index((7, 7)), get_relative_position_index(7, 7))


def test_patch_merging_channel_order() -> None:
    """Swin concatenates a 2x2 neighbourhood as (row, col) offsets (0,0), (1,0), (0,1), (1,1)."""
    merge = metablocks.create_model("swin_t").stages[1].downsample
    torch.nn.init.eye_(merge.reduction.weight)  # 4C=384 -> 192: read the first 192 of the concatenated channels
    merge.norm = torch.nn.Identity()
    x = torch.zeros(1, 96, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # channel 0 of the four pixels
    out = merge(x)  # (1, 192, 1, 1)
    assert out.shape == (1, 192, 1, 1)
    assert [out[0, 96 * i, 0, 0].item() for i in range(2)] == [1.0, 3.0]  # (0,0) then (1,0)


def test_macs_match_the_paper(pair_t) -> None:
    ours, theirs = pair_t
    gmacs = count_gmacs(ours)
    assert abs(gmacs - 4.5) / 4.5 <= 0.03
    assert gmacs == count_gmacs(theirs) == 4.509194496  # timm's explicit matmuls count the same as our SDPA


def test_other_resolution_equals_timm() -> None:
    """256: the maps 64, 32, 16, 8 are not multiples of 7, so windows are zero-padded, as in timm."""
    ours = metablocks.create_model("swin_t", img_size=256)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", img_size=256).eval()
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    ours.train()
    ours(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in ours.parameters())
    ours.eval()
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-4


def test_forward_backward_224(pair_t) -> None:
    model = copy.deepcopy(pair_t[0]).train()
    model.reset_classifier(10)
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.stages[0].blocks[1].token_mixer.relative_position_bias_table.grad.abs().sum() > 0


def test_built_at_224_run_at_256_masks_on_the_fly(pair_t) -> None:
    ours, _ = pair_t
    theirs = timm.create_model("swin_tiny_patch4_window7_224", dynamic_img_size=True).eval()
    theirs.load_state_dict(pair_t[1].state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-4


def test_check_errors() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.create_model("swin_t", overrides={"block.token_mixer[1].shift": 7})
    assert "the shift (7) must be in [0, window_size=7)" in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.create_model("swin_t", overrides={"block.token_mixer[0].head_dim": 36})
    assert "dim=96 is not divisible by head_dim=36" in str(err.value)
