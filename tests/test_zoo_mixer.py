"""MLP-Mixer S/16, B/16, L/16 (Tolstikhin et al., NeurIPS 2021) as recipes: equal to timm, one isotropic stage,
a fixed 14x14 token grid."""
import pytest
import torch

import metablocks
from zoo_timm import assert_equal_to_timm

timm = pytest.importorskip("timm")

# measured; equal to timm's parameter count for the same name
PARAMS = {
    "mixer_s16_224": 18_528_264,
    "mixer_b16_224": 59_880_472,
    "mixer_l16_224": 208_196_168,
}
FAST = ["mixer_s16_224"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm(name: str) -> None:
    assert_equal_to_timm(name, PARAMS[name], timm)


@pytest.mark.parametrize("name, depth, dim, table_params_m", [
    ("mixer_s16_224", 8, 512, 18), ("mixer_b16_224", 12, 768, 59), ("mixer_l16_224", 24, 1024, 207)])
def test_recipe_reads_like_table_1(name: str, depth: int, dim: int, table_params_m: int) -> None:
    recipe = metablocks.load_recipe(name)
    assert recipe.timm_name == name
    assert recipe.paper.title == "MLP-Mixer: An all-MLP Architecture for Vision"
    assert recipe.paper.params_m == table_params_m
    (stage,) = recipe.stages
    assert (stage.depth, stage.dim) == (depth, dim)
    assert stage.token_mixer[0].hidden(dim) == dim // 2  # D_S
    assert int(stage.channel_mixer[0].ratio * dim) == 4 * dim  # D_C
    # Table 1 counts the parameters without the classifier: ours less head.fc rounds to the table's number
    assert round((PARAMS[name] - (dim * 1000 + 1000)) / 1e6) == table_params_m


def test_one_stage_of_196_tokens() -> None:
    model = metablocks.create_model("mixer_s16_224")
    # one stage: a feature level per block, as timm's MLP-Mixer exposes
    assert model.feature_info == [dict(num_chs=512, reduction=16, module=f"stages.0.blocks.{j}") for j in range(8)]
    block = model.stages[0].blocks[0]
    assert block.layout == "channels_last"
    assert (block.token_mixer.fc1.in_features, block.token_mixer.fc1.out_features) == (196, 256)
    assert model.stages[0]._perms[0] == (0, 2, 3, 1) and all(p is None for p in model.stages[0]._perms[1:])
    assert model.head.norm_first


def test_other_input_sizes_are_refused() -> None:
    model = metablocks.create_model("mixer_s16_224")
    with pytest.raises(ValueError, match="fixed 224x224 token grid; got a 192x192 input"):
        model(torch.randn(1, 3, 192, 192))


def test_features_only_gives_the_single_stage_map() -> None:
    features = metablocks.create_model("mixer_s16_224", features_only=True, out_indices=(-1,))
    (out,) = features(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 512, 14, 14)
    assert features.feature_info.module_name() == ["stages.0.blocks.7"]
