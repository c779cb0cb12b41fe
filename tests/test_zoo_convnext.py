"""ConvNeXt (Liu et al., CVPR 2022; atto..nano are timm's) as recipes: every size equal to timm, the
channels-last residual stream, and multi-scale features for dense tasks."""
import pytest
import torch

import metablocks
from metablocks.features import FeatureExtractor
from metablocks.interop.timm import load_timm_state_dict
from zoo_timm import assert_equal_to_timm, perturb

timm = pytest.importorskip("timm")

# measured; equal to timm's parameter count for the same name
PARAMS = {
    "convnext_atto": 3_695_520,
    "convnext_femto": 5_217_784,
    "convnext_pico": 9_045_672,
    "convnext_nano": 15_593_560,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}
FAST = ["convnext_atto", "convnext_femto", "convnext_pico"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm(name: str) -> None:
    assert_equal_to_timm(name, PARAMS[name], timm)


@pytest.mark.parametrize("name", list(PARAMS))
def test_recipe_records_the_paper(name: str) -> None:
    recipe = metablocks.load_recipe(name)
    assert recipe.timm_name == name
    assert recipe.paper.title == "A ConvNet for the 2020s"
    assert recipe.paper.params_m is not None and recipe.paper.macs_g is not None
    assert abs(PARAMS[name] / 1e6 - recipe.paper.params_m) <= 0.5  # the table's rounding
    if name in ("convnext_femto", "convnext_pico", "convnext_nano"):  # timm originals: no published top-1
        assert recipe.paper.top1 is None
    else:
        assert recipe.paper.top1 is not None


def test_residual_stream_runs_channels_last_with_one_permute_each_way() -> None:
    """Like timm's block: only the depthwise conv sees (B, C, H, W); LN, MLP and layer scale work on (B, H, W, C)."""
    model = metablocks.create_model("convnext_atto")
    block = model.stages[1].blocks[0]
    assert block.layout == "channels_last"
    (branch,) = block._branches
    perms = {name: perm for name, perm in branch.steps}
    assert perms == {"token_mixer": (0, 3, 1, 2), "norm1": (0, 2, 3, 1), "channel_mixer": None}
    assert branch.out_perm is None
    assert isinstance(block.channel_mixer.fc1, torch.nn.Linear)
    assert block.token_mixer.conv.kernel_size == (7, 7) and block.token_mixer.conv.groups == 80


def test_head_pools_then_normalizes() -> None:
    model = metablocks.create_model("convnext_atto").eval()
    x = torch.randn(2, 320, 7, 7)
    with torch.no_grad():
        assert torch.allclose(model.head(x), model.head.fc(model.head.norm(x.mean((2, 3)))), atol=1e-6)


def test_features_only_matches_timm_intermediates() -> None:
    ours = metablocks.create_model("convnext_atto").eval()
    theirs = timm.create_model("convnext_atto").eval()
    perturb(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    features = FeatureExtractor(ours, out_indices=(0, 1, 2, 3))
    with torch.no_grad():
        got = features(x)
        expected = theirs.forward_intermediates(x, intermediates_only=True)
    assert [tuple(t.shape) for t in got] == [(2, 40, 56, 56), (2, 80, 28, 28), (2, 160, 14, 14), (2, 320, 7, 7)]
    for a, b in zip(got, expected):
        assert (a - b).abs().max().item() <= 1e-4
    assert features.channels() == [40, 80, 160, 320]
    assert features.reductions() == [4, 8, 16, 32]


def test_create_model_features_only() -> None:
    features = metablocks.create_model("convnext_atto", features_only=True, out_indices=(1, -1))
    assert isinstance(features, FeatureExtractor)
    assert not any(name.startswith("head.") for name in features.state_dict())
    maps = features(torch.randn(1, 3, 96, 128))
    assert [tuple(t.shape) for t in maps] == [(1, 80, 12, 16), (1, 320, 3, 4)]
    assert features.reductions() == [8, 32]
    with pytest.raises(ValueError, match=r"convnext_atto has 4 stages \(0..3\), got 4"):
        metablocks.create_model("convnext_atto", features_only=True, out_indices=(4,))


def test_features_only_drops_stages_past_the_last_index() -> None:
    features = metablocks.create_model("convnext_atto", features_only=True, out_indices=(0, 1))
    assert len(features.stages) == 2
    assert [tuple(t.shape) for t in features(torch.randn(1, 3, 64, 64))] == [(1, 40, 16, 16), (1, 80, 8, 8)]
