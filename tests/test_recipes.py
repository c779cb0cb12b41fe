"""Loading: extends, stage_defaults, per-block cycling lists, overrides, the canonical resolved form and its hash."""
from pathlib import Path

import pytest
import torch
import yaml

import metablocks
from metablocks.recipe import shipped_recipes

METAFORMER_SIZES = {
    "poolformer": ["s12", "s24", "s36", "m36", "m48"], "poolformerv2": ["s12", "s24", "s36", "m36", "m48"],
    "identityformer": ["s12", "s24", "s36", "m36", "m48"], "randformer": ["s12", "s24", "s36", "m36", "m48"],
    "convformer": ["s18", "s36", "m36", "b36"], "caformer": ["s18", "s36", "m36", "b36"],
}


def test_every_metaformer_size_is_shipped_with_provenance() -> None:
    shipped = shipped_recipes()
    for family, sizes in METAFORMER_SIZES.items():
        for size in sizes:
            name = f"{family}_{size}"
            assert name in metablocks.list_recipes()
            raw = yaml.safe_load(shipped[name].read_text())
            assert raw["extends"] == f"{family}.yaml"  # sizes extend the family base
            assert {"params_m", "macs_g", "top1"} <= set(raw["paper"])
    assert "caformer" not in shipped  # bases are not models


def test_sizes_change_only_depths_and_dims() -> None:
    s18, b36 = metablocks.load_recipe("caformer_s18"), metablocks.load_recipe("caformer_b36")
    assert [(s.depth, s.dim) for s in s18.stages] == [(3, 64), (3, 128), (9, 320), (3, 512)]
    assert [(s.depth, s.dim) for s in b36.stages] == [(3, 128), (12, 256), (18, 512), (3, 768)]
    assert [s.token_mixer[0].name for s in b36.stages] == ["sepconv", "sepconv", "attention", "attention"]
    assert [s.res_scale for s in b36.stages] == [None, None, 1.0, 1.0]
    assert b36.paper.params_m == 99 and b36.paper.title == "MetaFormer Baselines for Vision"


def test_resolved_dump_round_trips_to_the_same_model(tmp_path: Path) -> None:
    recipe = metablocks.load_recipe("caformer_s18")
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(recipe.to_yaml())
    again = metablocks.load_recipe(dumped)
    assert again.model_id == recipe.model_id and again.dump() == recipe.dump()
    assert "extends" not in dumped.read_text() and "stage_defaults" not in dumped.read_text()
    torch.manual_seed(1)
    a = metablocks.build_model(recipe)
    torch.manual_seed(1)
    b = metablocks.build_model(dumped)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_model_id_ignores_provenance_but_not_architecture() -> None:
    recipe = metablocks.load_recipe("convformer_s18")
    renamed = metablocks.load_recipe("convformer_s18", overrides={"name": "other", "paper.top1": 1.0})
    wider = metablocks.load_recipe("convformer_s18", overrides={"stages[0].dim": 72})
    assert renamed.model_id == recipe.model_id != wider.model_id
    assert len(recipe.model_id) == 12


def test_overrides_from_python_and_strings() -> None:
    a = metablocks.load_recipe("caformer_s18", overrides={"stages[1].token_mixer.type": "attention"})
    b = metablocks.load_recipe("caformer_s18", overrides=["stages[1].token_mixer.type=attention"])
    assert a.stages[1].token_mixer[0].name == "attention" == b.stages[1].token_mixer[0].name
    # a new type replaces the component: sepconv's kernel_size does not leak into attention
    assert "kernel_size" not in a.stages[1].token_mixer[0].dump()
    c = metablocks.load_recipe("caformer_s18", overrides=["stages[2:].token_mixer={type: pooling, pool_size: 5}"])
    assert [s.token_mixer[0].dump() for s in c.stages[2:]] == [{"type": "pooling", "pool_size": 5}] * 2
    d = metablocks.load_recipe("poolformer_s12", overrides=["block.layer_scale=0.5", "num_classes=10"])
    assert {s.layer_scale for s in d.stages} == {0.5} and d.num_classes == 10


def test_per_block_lists_cycle(tmp_path: Path) -> None:
    recipe = metablocks.load_recipe("poolformer_s12", overrides={
        "stages[2].token_mixer": [{"type": "pooling"}, {"type": "attention", "head_dim": 32}]})
    model = metablocks.build_model(recipe)
    names = [type(block.token_mixer).__name__ for block in model.stages[2].blocks]
    assert names == ["Pooling", "Attention"] * 3
    # the layout flips per block (pooling NCHW, attention NHWC): one permute per change, none inside blocks
    assert [block.io_layout for block in model.stages[2].blocks] == ["channels_first", "channels_last"] * 3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_dict_recipe_and_build_fields() -> None:
    raw = yaml.safe_load(metablocks.load_recipe("poolformerv2_s12").to_yaml())
    model = metablocks.build_model(raw, num_classes=7, img_size=96)
    assert model.recipe.img_size == (96, 96) and model(torch.randn(2, 3, 96, 96)).shape == (2, 7)


def test_installed_package_ships_the_recipes() -> None:
    from metablocks.recipe import recipes_dir

    assert (recipes_dir() / "metaformer" / "caformer_s18.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", metablocks.list_recipes())
def test_another_input_size_runs_or_is_told(name: str) -> None:
    """At an input 24 px smaller than built for, every shipped model runs, or says why not in a ValueError (a fixed
    token grid, stripes or windows the map does not divide): never an error from deep inside torch."""
    recipe = metablocks.load_recipe(name)
    model = metablocks.create_model(name).eval()
    x = torch.randn(1, recipe.in_chans, recipe.img_size[0] - 24, recipe.img_size[1] - 24)
    try:
        with torch.inference_mode():
            assert model(x).shape[:2] == (1, recipe.num_classes)  # (CCNet segments: (1, classes, H, W))
    except ValueError as err:
        assert "x" in str(err)  # names the size it got
