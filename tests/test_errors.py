"""Every class of recipe mistake raises RecipeError naming file, line, field path, what was given and what is allowed."""
from pathlib import Path

import pytest

import metablocks
from metablocks import RecipeError

BASE = """\
name: tiny
img_size: 32
stem: {type: conv, kernel_size: 4, stride: 4, padding: 0}
downsample: {type: conv, kernel_size: 2, stride: 2, padding: 0}
block:
  norm: {type: groupnorm}
  token_mixer: pooling
stages:
  - {depth: 1, dim: 16}
  - {depth: 1, dim: 32}
"""


def error_of(text: str, tmp_path: Path, name: str = "r.yaml", **kwargs) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe(path, **kwargs)
    return str(err.value)


def test_base_is_valid(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(BASE)
    recipe = metablocks.load_recipe(tmp_path / "ok.yaml")
    assert [s.dim for s in recipe.stages] == [16, 32]


def test_unknown_component_suggests_the_close_name(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("token_mixer: pooling", "token_mixer: poolng"), tmp_path)
    assert "r.yaml:7: stages[0].token_mixer: unknown token_mixer 'poolng' (did you mean 'pooling'?)" in msg
    assert "allowed: aggregated_attention, attention, " in msg and "(set at block.token_mixer)" in msg
    assert msg.count("poolng") == 1  # written once in block:, reported once, not once per stage


def test_unknown_field_of_a_component(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("token_mixer: pooling", "token_mixer: {type: pooling, pool_sise: 5}"), tmp_path)
    assert "r.yaml:7: stages[0].token_mixer.pool_sise: unknown field 'pool_sise' (did you mean 'pool_size'?); allowed: pool_size" in msg


def test_unknown_top_level_field(tmp_path: Path) -> None:
    msg = error_of(BASE + "num_clases: 10\n", tmp_path)
    assert "r.yaml:11: num_clases: unknown field 'num_clases' (did you mean 'num_classes'?)" in msg


def test_wrong_type_says_what_was_given(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("{depth: 1, dim: 32}", "{depth: two, dim: 32}"), tmp_path)
    assert "r.yaml:10: stages[1].depth: Input should be a valid integer" in msg and "(given: 'two')" in msg


def test_missing_field(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("{depth: 1, dim: 32}", "{depth: 1}"), tmp_path)
    assert "r.yaml:10: stages[1].dim: missing field 'dim'" in msg


def test_component_without_type(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("token_mixer: pooling", "token_mixer: {pool_size: 3}"), tmp_path)
    assert "stages[0].token_mixer: a token_mixer needs 'type:'; allowed: " in msg


def test_several_mistakes_are_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace("{depth: 1, dim: 16}", "{depth: -1, dim: 16}").replace("token_mixer: pooling", "token_mixer: pool")
    msg = error_of(text, tmp_path)
    assert "2 problems" in msg and "stages[0].depth" in msg and "unknown token_mixer 'pool'" in msg


def test_yaml_syntax_error_has_the_line(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("  - {depth: 1, dim: 32}", "  - {depth: 1, dim: 32"), tmp_path)
    assert "r.yaml:11: YAML syntax error" in msg


def test_python_tags_are_refused(tmp_path: Path) -> None:
    msg = error_of(BASE + "description: !!python/object/apply:os.system ['echo hacked']\n", tmp_path)
    assert "r.yaml:11: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in msg


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    msg = error_of(BASE + "img_size: 64\n", tmp_path)
    assert "r.yaml:11: img_size: duplicate key 'img_size'" in msg


def test_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    msg = error_of("extends: a.yaml\n", tmp_path, name="b.yaml")
    assert "a.yaml:1: extends: extends cycle: b.yaml -> a.yaml -> b.yaml" in msg


def test_extends_missing_file(tmp_path: Path) -> None:
    msg = error_of("name: x\nextends: nowhere.yaml\n", tmp_path)
    assert "r.yaml:2: extends: cannot find the recipe to extend: 'nowhere.yaml'" in msg


def test_dim_not_divisible_by_heads(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("{depth: 1, dim: 32}", "{depth: 1, dim: 30, token_mixer: {type: attention, num_heads: 4}}"),
                   tmp_path)
    assert "r.yaml:10: stages[1].token_mixer: token_mixer 'attention': dim=30 is not divisible by num_heads=4" in msg


def test_even_kernel_where_odd_is_required(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("token_mixer: pooling", "token_mixer: {type: sepconv, kernel_size: 6}"), tmp_path)
    assert "stages[0].token_mixer: token_mixer 'sepconv': kernel_size must be odd to keep the map size, got 6" in msg


def test_resolution_too_small_for_the_downsample_chain(tmp_path: Path) -> None:
    text = BASE.replace("img_size: 32", "img_size: 4")
    msg = error_of(text, tmp_path)
    assert "r.yaml:4: stages[1].downsample: downsample 'conv': a 1x1 map is too small for a 2x2 stride-2 downsample" in msg


def test_width_change_without_downsample(tmp_path: Path) -> None:
    msg = error_of(BASE.replace("downsample: {type: conv, kernel_size: 2, stride: 2, padding: 0}\n", ""), tmp_path)
    assert "stages[1].dim: stage 1 changes the width from 16 to 32 but has no downsample" in msg


def test_stage_defaults_length(tmp_path: Path) -> None:
    msg = error_of(BASE + "stage_defaults: [{}]\n", tmp_path)
    assert "r.yaml:11: stage_defaults: stage_defaults must list one entry per stage: 2 stages, given 1" in msg


def test_bad_override_path_and_value(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(BASE)
    with pytest.raises(RecipeError, match=r"stages\[5\].dim: index 5 is out of range: there are 2 items"):
        metablocks.load_recipe(tmp_path / "ok.yaml", overrides=["stages[5].dim=8"])
    with pytest.raises(RecipeError, match="an override is PATH=VALUE"):
        metablocks.load_recipe(tmp_path / "ok.yaml", overrides=["stages[1].dim"])
    with pytest.raises(RecipeError, match=r"<override>: stages\[1\].token_mixer: unknown token_mixer 'attn'"):
        metablocks.load_recipe(tmp_path / "ok.yaml", overrides=["stages[1].token_mixer.type=attn"])


def test_unknown_shipped_name() -> None:
    with pytest.raises(RecipeError, match=r"no recipe file or shipped recipe named 'caformer_s81' \(did you mean 'caformer_s18'\?\)"):
        metablocks.create_model("caformer_s81")


def test_block_api_errors() -> None:
    with pytest.raises(RecipeError, match=r"MetaFormerBlock\(...\): shape: .*unknown block shape 'metaformr' \(did you mean 'metaformer'\?\)"):
        metablocks.MetaFormerBlock(dim=8, shape="metaformr")
    with pytest.raises(RecipeError, match="dim=64 is not divisible by num_heads=5"):
        metablocks.MetaFormerBlock(dim=64, token_mixer={"type": "attention", "num_heads": 5})
