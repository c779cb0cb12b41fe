"""FasterNet (Chen et al., CVPR 2023) as recipes: every size equal to timm, weight for weight; its partial
convolution is the generic ``split`` composite (a dense 3x3 conv on a quarter of the channels, the rest untouched),
not a class of its own."""
import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks import RecipeError
from metablocks.components.composites.split import Split
from metablocks.components.heads.conv_head import ConvHead
from zoo_timm import assert_equal_to_timm

timm = pytest.importorskip("timm")

# measured; equal to timm 1.0.31's parameter count for the same name
PARAMS = {
    "fasternet_t0": 3_905_500,
    "fasternet_t1": 7_595_368,
    "fasternet_t2": 14_982_888,
    "fasternet_s": 31_181_032,
    "fasternet_m": 53_521_464,
    "fasternet_l": 93_465_192,
}
FAST = ["fasternet_t0"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm(name: str) -> None:
    assert_equal_to_timm(name, PARAMS[name], timm)


@pytest.mark.parametrize("name", list(PARAMS))
def test_recipe_records_the_paper(name: str) -> None:
    recipe = metablocks.load_recipe(name)
    assert recipe.timm_name == name
    assert recipe.paper.title == "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks"
    assert None not in (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1)
    assert abs(PARAMS[name] / 1e6 - recipe.paper.params_m) <= 0.1  # FasterNet-S: 31.18M printed as 31.1
    act = recipe.stages[0].channel_mixer[0].act.type
    assert act == ("gelu" if name in ("fasternet_t0", "fasternet_t1") else "relu") == recipe.head.act.type


def test_pconv_is_a_split_of_a_quarter() -> None:
    model = metablocks.create_model("fasternet_t0").eval()
    block = model.stages[2].blocks[0]  # dim 160: 40 channels through the 3x3 conv, 120 untouched
    assert isinstance(block.token_mixer, Split) and block.token_mixer.widths == [40, 120]
    conv = block.token_mixer.parts[0]
    assert conv.weight.shape == (40, 40, 3, 3) and conv.bias is None
    x = torch.randn(2, 160, 14, 14)
    with torch.no_grad():
        y = block.token_mixer(x)
    assert torch.equal(y[:, 40:], x[:, 40:])
    assert torch.allclose(y[:, :40], F.conv2d(x[:, :40], conv.weight, padding=1), atol=1e-6)


def test_block_is_x_plus_mlp_of_pconv() -> None:
    """x + fc2(act(bn(fc1(pconv(x))))): one residual branch, no norm in front, no layer scale (timm's default 0)."""
    model = metablocks.create_model("fasternet_t2").eval()
    block = model.stages[1].blocks[1]
    assert not hasattr(block, "layer_scale1") and not hasattr(block, "norm1")
    mlp = block.channel_mixer
    with torch.no_grad():
        mlp.norm.running_mean.uniform_(-1, 1)
        mlp.norm.running_var.uniform_(0.5, 2)
        x = torch.randn(1, 192, 7, 7)
        hidden = F.relu(F.batch_norm(F.conv2d(block.token_mixer(x), mlp.fc1.weight), mlp.norm.running_mean,
                                     mlp.norm.running_var, mlp.norm.weight, mlp.norm.bias, eps=1e-5))
        assert torch.allclose(block(x.clone()), x + F.conv2d(hidden, mlp.fc2.weight), atol=1e-5)


def test_conv_head_pre_logits_reset_and_no_pool() -> None:
    model = metablocks.create_model("fasternet_t0").eval()
    head = model.head
    assert isinstance(head, ConvHead) and model.head_hidden_size == 1280
    x = torch.randn(2, 320, 7, 7)
    with torch.no_grad():
        by_hand = head.fc(F.gelu(F.conv2d(x.mean((2, 3), keepdim=True), head.conv.weight)).flatten(1))
        assert torch.allclose(head(x), by_hand, atol=1e-6)
        assert head(x, pre_logits=True).shape == (2, 1280)
    conv = head.conv.weight.clone()
    model.reset_classifier(10)
    assert model.head.fc.in_features == 1280 and torch.equal(model.head.conv.weight, conv)
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)  # the conv at every position


def test_feature_levels_match_timm() -> None:
    ours = metablocks.create_model("fasternet_t0")
    theirs = timm.create_model("fasternet_t0")
    assert [(f["num_chs"], f["reduction"]) for f in ours.feature_info] == \
           [(f["num_chs"], f["reduction"]) for f in theirs.feature_info]


def test_bad_settings_are_reported_before_building() -> None:
    """Each part is checked at its own width (a quarter of the stage's) and located where the value was written."""
    with pytest.raises(RecipeError) as err:
        metablocks.build_model("fasternet_t0", overrides={"block.token_mixer.parts[0].mixer.groups": 3,
                                                          "block.token_mixer.parts[0].mixer.kernel_size": 4})
    text = str(err.value)
    for stage, width in enumerate((10, 20, 40, 80)):
        assert (f"stages[{stage}].token_mixer.parts[0].mixer: token_mixer 'conv': groups=3 does not divide "
                f"dim={width} (set at block.token_mixer.parts[0].mixer)") in text
    assert "token_mixer 'conv': kernel_size must be odd to keep the map size, got 4" in text
    assert all(p.file and p.file.endswith("fasternet.yaml") for p in err.value.problems)
    third = {"type": "split", "parts": [{"channels": 0.3, "mixer": "conv"}, {"channels": "rest"}]}
    assert metablocks.load_recipe("fasternet_t0", {"stages[2].token_mixer": third}).stages[2].token_mixer[0] \
        .widths(160) == [48, 112]  # any fraction: int(0.3 x 160)
