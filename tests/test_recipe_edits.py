"""A child recipe edits one stage of its base (``stages: {2: {...}}``); precedence is block < stage_defaults < stages,
and a child key that the base's more specific key would override is an error, not silently dropped."""
from __future__ import annotations

from pathlib import Path

import pytest

import metablocks
from metablocks import RecipeError, load_recipe

BASE = """stem: {type: conv, kernel_size: 4, stride: 4, padding: 0}
img_size: 32
stages:
  - {depth: 1, dim: 16, token_mixer: pooling}
  - {depth: 2, dim: 32, token_mixer: pooling, downsample: {type: conv, kernel_size: 2, stride: 2, padding: 0}}
"""


@pytest.fixture
def family(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    return tmp_path


def child(family: Path, text: str) -> Path:
    path = family / "child.yaml"
    path.write_text("extends: base.yaml\n" + text)
    return path


def test_edit_one_stage(family):
    recipe = load_recipe(child(family, "stages:\n  1: {token_mixer: {type: attention, head_dim: 8}}\n"))
    assert [s.token_mixer[0].name for s in recipe.stages] == ["pooling", "attention"]
    assert [(s.depth, s.dim) for s in recipe.stages] == [(1, 16), (2, 32)]
    assert recipe.stages[1].downsample.kernel_size == 2  # the rest of stage 1 kept
    negative = load_recipe(child(family, "stages:\n  -1: {depth: 3}\n"))
    assert [s.depth for s in negative.stages] == [1, 3]


def test_edit_changes_model_id(family):
    base = load_recipe(family / "base.yaml")
    edited = load_recipe(child(family, "stages:\n  0: {token_mixer: identity}\n"))
    assert edited.model_id != base.model_id


def test_edit_out_of_range(family):
    with pytest.raises(RecipeError) as info:
        load_recipe(child(family, "stages:\n  5: {dim: 8}\n"))
    assert str(info.value).endswith("child.yaml:3: stages[5]: edits item 5, but the list it edits has 2 items "
                                    "(indices 0..1, or -2..-1 from the end)")


def test_list_replaces_with_hint(family):
    with pytest.raises(RecipeError) as info:
        load_recipe(child(family, "stages:\n  - {token_mixer: attention}\n"))
    assert len(info.value.problems) == 1
    assert "stages: as a list replaces all 2 stages of the recipe it extends" in str(info.value)
    assert "to change stage 0 only, write stages: {0: {...}}" in str(info.value)


def test_child_stage_defaults_without_effect(family):
    with pytest.raises(RecipeError) as info:
        load_recipe(child(family, "stage_defaults:\n  - {}\n  - {token_mixer: identity}\n"))
    (problem,) = info.value.problems
    assert problem.file.endswith("child.yaml") and problem.line == 4 and problem.path == "stage_defaults[1].token_mixer"
    assert problem.message.startswith(f"has no effect: stages[1].token_mixer is set in {family / 'base.yaml'}:5")
    assert "write stages: {1: {token_mixer: ...}}" in problem.message


def test_child_block_without_effect_but_new_field_is_fine(family):
    with pytest.raises(RecipeError, match=r"block.token_mixer: has no effect: stages\[0\].token_mixer"):
        load_recipe(child(family, "block: {token_mixer: identity}\n"))
    recipe = load_recipe(child(family, "block: {layer_scale: 1.0e-5}\n"))  # no stage sets it: applies to all
    assert [s.layer_scale for s in recipe.stages] == [1e-5, 1e-5]


def test_override_without_effect():
    with pytest.raises(RecipeError, match=r"<override>: block.token_mixer: has no effect: stages\[0\].token_mixer is set in .*caformer.yaml:4 \(stage_defaults\[0\]"):
        load_recipe("caformer_s18", ["block.token_mixer=identity"])


def test_shipped_recipes_all_load():
    for name in metablocks.list_recipes():
        load_recipe(name)


def test_shipped_recipes_keep_model_id_and_parameters():
    """Every shipped recipe's model_id, parameter count and state_dict size, as recorded when zoo I was finished:
    a new field or component option must not change an existing recipe's identity or weights."""
    import json

    import torch

    expected = json.loads((Path(__file__).parent / "data" / "shipped_model_ids.json").read_text())
    assert sorted(expected) == metablocks.list_recipes()
    for name, want in expected.items():
        recipe = load_recipe(name)
        with torch.device("meta"):
            model = metablocks.build_model(recipe)
        got = {"model_id": recipe.model_id, "params": sum(p.numel() for p in model.parameters()),
               "state_dict_keys": len(model.state_dict())}
        assert got == want, name
