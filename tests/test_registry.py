"""User components: registered from user code or an installed package, valid in YAML at once, listed, in the schema."""
import json
import runpy
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import metablocks
from metablocks import registry

ROOT = Path(__file__).resolve().parents[1]


@metablocks.register("token_mixer", "test_shift")
class Shift(nn.Module):
    """Shift half the channels one row down (a test mixer; its config is derived from the signature)."""

    def __init__(self, dim: int, *, rows: int = 1) -> None:
        super().__init__()
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, self.rows, dims=1)


def test_registered_mixer_is_valid_in_a_recipe_with_its_fields_validated() -> None:
    model = metablocks.build_model("poolformer_s12", overrides={"stages[3].token_mixer": {"type": "test_shift", "rows": 2}})
    assert isinstance(model.stages[3].blocks[0].token_mixer, Shift) and model.stages[3].blocks[0].token_mixer.rows == 2
    with pytest.raises(metablocks.RecipeError, match=r"stages\[3\].token_mixer.rows: Input should be a valid integer"):
        metablocks.load_recipe("poolformer_s12", overrides={"stages[3].token_mixer": {"type": "test_shift", "rows": "x"}})
    with pytest.raises(metablocks.RecipeError, match="unknown field 'row' \\(did you mean 'rows'\\?\\); allowed: rows"):
        metablocks.load_recipe("poolformer_s12", overrides={"stages[3].token_mixer": {"type": "test_shift", "row": 2}})


def test_registered_mixer_is_listed_and_in_the_schema() -> None:
    assert "test_shift" in metablocks.list_components("token_mixer")
    assert "test_shift" in json.dumps(metablocks.Recipe.model_json_schema())


def test_signature_without_defaults_is_refused() -> None:
    with pytest.raises(registry.RegistryError, match="parameter 'size' needs a type hint and a default"):
        @metablocks.register("token_mixer", "test_bad")
        class Bad(nn.Module):
            def __init__(self, dim, *, size):
                super().__init__()


def test_name_clash_is_refused() -> None:
    with pytest.raises(registry.RegistryError, match="token_mixer 'pooling' is already registered"):
        metablocks.register("token_mixer", "pooling")(Shift)


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package contributes components through the `metablocks.components` entry-point group."""
    (tmp_path / "mb_demo_plugin.py").write_text(textwrap.dedent('''
        from torch import nn
        import metablocks

        @metablocks.register("channel_mixer", "demo_plugin_mlp")
        class DemoMlp(nn.Module):
            """A channel mixer from an installed plugin (test)."""
            def __init__(self, dim: int, *, scale: float = 2.0) -> None:
                super().__init__()
                self.scale = scale
            def forward(self, x):
                return x * self.scale
    '''))
    dist = tmp_path / "mb_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metablocks.components]\ndemo = mb_demo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.load_plugins(refresh=True)
    recipe = metablocks.load_recipe("poolformer_s12", overrides={"block.channel_mixer": {"type": "demo_plugin_mlp", "scale": 3}})
    assert recipe.stages[0].channel_mixer[0].dump() == {"type": "demo_plugin_mlp", "scale": 3.0}


def test_recipes_never_import_code(tmp_path: Path) -> None:
    with pytest.raises(metablocks.RecipeError, match="unknown token_mixer 'os.system'"):
        metablocks.load_recipe("poolformer_s12", overrides={"block.token_mixer": "os.system"})


def test_custom_mixer_example_runs() -> None:
    out = runpy.run_path(str(ROOT / "examples" / "custom_mixer.py"))["main"]()
    assert round(out["params_m"], 2) == 11.67


def test_a_downsample_that_takes_prefix_tokens_must_say_how() -> None:
    """A downsample declaring ``tokens = "apply"`` (it takes carried prefix tokens across) needs ``forward_prefix``."""
    class Config(registry.Component):
        tokens = "apply"

        def build(self, ctx: registry.Context) -> nn.Module:
            return nn.Identity()

    class NoRule(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(registry.RegistryError, match=r"downsample 'test_no_rule' says it takes carried prefix tokens "
                                                     r"across \(tokens = 'apply'\), but .*NoRule has no "
                                                     r"forward_prefix\(prefix\) method"):
        metablocks.register("downsample", "test_no_rule", config=Config)(NoRule)
    assert "test_no_rule" not in metablocks.list_components("downsample")
