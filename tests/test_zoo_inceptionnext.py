"""InceptionNeXt (Yu et al., CVPR 2024) as recipes: every size equal to timm; the inception_dwconv mixer and
the mlp_classifier head by hand."""
import pytest
import torch

import metablocks
from metablocks import RecipeError
from metablocks.components.heads.mlp_classifier import MlpClassifierHead
from metablocks.components.token_mixers.inception_dwconv import InceptionDWConv
from zoo_timm import assert_equal_to_timm

timm = pytest.importorskip("timm")

# measured; equal to timm's parameter count for the same name
PARAMS = {
    "inception_next_atto": 4_156_520,
    "inception_next_tiny": 28_055_680,
    "inception_next_small": 49_374_016,
    "inception_next_base": 86_672_136,
}
FAST = ["inception_next_atto"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm(name: str) -> None:
    assert_equal_to_timm(name, PARAMS[name], timm)


@pytest.mark.parametrize("name", list(PARAMS))
def test_recipe_records_the_paper(name: str) -> None:
    recipe = metablocks.load_recipe(name)
    assert recipe.timm_name == name
    assert recipe.paper.title == "InceptionNeXt: When Inception Meets ConvNeXt"
    assert None not in (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1)
    assert abs(PARAMS[name] / 1e6 - recipe.paper.params_m) <= 0.5  # the table's rounding
    assert recipe.stages[3].channel_mixer[0].ratio == 3  # the last stage's MLP is 3x, the others 4x
    assert {s.channel_mixer[0].ratio for s in recipe.stages[:3]} == {4}


def test_split_sizes_and_identity_channels_pass_through() -> None:
    mixer = InceptionDWConv(96)  # branch_ratio 0.125: 12 channels per conv branch, 60 untouched
    assert mixer.split_sizes == (60, 12, 12, 12)
    x = torch.randn(2, 96, 9, 9)
    y = mixer(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, :60], x[:, :60])


def test_band_kernels_mix_along_one_axis_only() -> None:
    mixer = InceptionDWConv(8, band_kernel_size=5, branch_ratio=0.25)  # split (2, 2, 2, 2)
    with torch.no_grad():
        for conv in (mixer.dwconv_hw, mixer.dwconv_w, mixer.dwconv_h):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    x = torch.zeros(1, 8, 9, 9)
    x[:, :, 4, 4] = 1.0  # one impulse in the middle of every channel
    y = mixer(x)[0] != 0  # (C, H, W): where each channel's impulse spread to
    row = (torch.arange(9) - 4).abs()[:, None]  # distance from the impulse along H
    col = (torch.arange(9) - 4).abs()[None, :]  # along W
    assert torch.equal(y[0], (row == 0) & (col == 0))  # identity
    assert torch.equal(y[2], (row <= 1) & (col <= 1))  # 3x3 square
    assert torch.equal(y[4], (row == 0) & (col <= 2))  # 1x5 band: along W only
    assert torch.equal(y[6], (row <= 2) & (col == 0))  # 5x1 band: along H only


def test_bad_mixer_settings_are_reported_before_building() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.build_model("inception_next_atto", overrides={
            "stages[0].token_mixer.band_kernel_size": 10, "stages[1].token_mixer.branch_ratio": 0.5})
    text = str(err.value)
    assert "band_kernel_size must be odd to keep the map size, got 10" in text
    assert "branch_ratio=0.5 asks for 3 x 40 conv channels, more than dim=80" in text


def test_mlp_classifier_head_order_reset_and_pre_logits() -> None:
    model = metablocks.create_model("inception_next_atto").eval()
    head = model.head
    assert isinstance(head, MlpClassifierHead)
    x = torch.randn(2, 320, 7, 7)
    with torch.no_grad():
        by_hand = head.fc(head.norm(head.act(head.fc1(x.mean((2, 3))))))  # pool -> fc1 -> act -> norm -> fc
        assert torch.allclose(head(x), by_hand, atol=1e-6)
        assert head(x, pre_logits=True).shape == (2, 960)  # the 3x hidden features
    fc1 = head.fc1.weight.clone()
    model.reset_classifier(10)
    assert model.head.fc.out_features == 10 and model.head.fc.in_features == 960
    assert torch.equal(model.head.fc1.weight, fc1)  # the hidden layer survives, as in timm
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 960)
