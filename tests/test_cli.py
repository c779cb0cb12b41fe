"""The core CLI commands, called through ``metablocks.cli.main`` with their real output."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import metablocks
from metablocks.cli import main
from metablocks.commands.schema import editor_schema, resolved_schema
from metablocks.recipe import recipes_dir


@metablocks.register("token_mixer", "cli_test_roll", replace=True)
class CliTestRoll(nn.Module):
    """Rolls the map by ``shift`` pixels along its width (a user mixer registered by this test module)."""

    def __init__(self, dim: int, shift: int = 1) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, self.shift, dims=-1)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


BROKEN = """\
name: broken
stem: {type: conv}
stages:
  - {depth: 2, dim: 64}
  - {depth: 2, dim: 96, downsample: conv, token_mixer: {type: pooling, pool_size: 4}}
"""


def test_validate(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out = run(capsys, "validate", "poolformer_s12")
    assert code == 0
    assert out.strip() == f"ok poolformer_s12 ({metablocks.load_recipe('poolformer_s12').model_id})"

    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    code, out = run(capsys, "validate", "caformer_s18", str(broken))
    assert code == 2
    assert out.startswith("ok caformer_s18 (")
    assert f"FAIL {broken}" in out
    assert f"{broken}:5: stages[1].token_mixer: token_mixer 'pooling': pool_size must be odd" in out
    assert "1 of 2 recipes valid" in out


def test_validate_typo_names_the_line_it_was_written(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("extends: poolformer_s12.yaml\nblock:\n  token_mixer: {type: poolin}\n")
    code, out = run(capsys, "validate", str(typo))
    assert code == 2
    assert f"{typo}:3: stages[0].token_mixer: unknown token_mixer 'poolin'" in out
    assert "did you mean 'pooling'?" in out


def test_info_table(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "info", "poolformer_s12")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["stage", "depth", "dim", "token", "mixer", "channel", "mixer", "output", "params", "MACs"]
    assert next(line for line in lines if line.startswith("stem")).split() == [
        "stem", "-", "64", "(conv", "stem)", "-", "64x56x56", "9.5K", "29.5M"]  # 64*3*49 + 64 params, 56*56*64*3*49 MACs
    assert next(line for line in lines if line.startswith("stages.2")).split()[:6] == [
        "stages.2", "6", "320", "pooling", "mlp", "320x14x14"]
    assert "total: 11.9M params (11,915,176), 1.8G MACs (1,822,555,648) at 3x224x224" in out
    assert "paper: 12M params, 1.8G MACs, 77.2% top-1 at 224x224" in out
    assert "avg_pool2d x12" in out  # named as not counted


def test_info_input_and_set(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "info", "caformer_s18", "--input", "3x64x64", "--set", "stages[0].depth=1")
    assert code == 0
    stem = next(line for line in out.splitlines() if line.startswith("stem"))
    assert "64x16x16" in stem
    stage = next(line for line in out.splitlines() if line.startswith("stages.2")).split()
    assert stage[:6] == ["stages.2", "9", "320", "attention(head_dim=32)", "mlp(act=star_relu, bias=False)", "320x4x4"] or \
        stage[:7] == ["stages.2", "9", "320", "attention(head_dim=32)", "mlp(act=star_relu,", "bias=False)", "320x4x4"]
    assert next(line for line in out.splitlines() if line.startswith("stages.0")).split()[1] == "1"


def test_info_resolved_reloads_to_the_same_model(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out = run(capsys, "info", "caformer_s18", "--resolved", "--set", "stages[1].token_mixer.kernel_size=5")
    assert code == 0
    recipe = metablocks.load_recipe("caformer_s18", ["stages[1].token_mixer.kernel_size=5"])
    assert out.splitlines()[0] == f"# caformer_s18: model_id {recipe.model_id} (content hash of the resolved architecture)"
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(out)
    again = metablocks.load_recipe(resolved)
    assert again.model_id == recipe.model_id != metablocks.load_recipe("caformer_s18").model_id
    assert again.stages[1].token_mixer[0].kernel_size == 5


def test_info_bad_input(capsys: pytest.CaptureFixture) -> None:
    for bad, why in (("3x224x224x1", "expected CxHxW"), ("big", "expected CxHxW"), ("0x224", "sizes must be positive")):
        with pytest.raises(SystemExit):
            main(["info", "poolformer_s12", "--input", bad])
        assert why in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "list")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("caformer_s18 "))
    assert row.split() == ["caformer_s18", "26", "4.1", "83.6", "caformer_s18", "metaformer/caformer_s18.yaml"]
    assert "token_mixer (" in out
    attention = out.split("\n  attention  - ")[1].splitlines()
    assert attention[0].startswith("softmax(QK^T / sqrt(d)) V")
    assert "      head_dim: int | None = None" in attention
    assert "      qkv_bias: bool = False" in attention


def test_list_components_of_a_kind(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "list", "--kind", "act")
    assert code == 0
    assert out.startswith("act (")
    assert "token_mixer" not in out and "caformer_s18" not in out
    assert "  star_relu  - s * relu(x)^2 + b" in out
    assert "      scale_value: float = 1.0" in out
    code, out = run(capsys, "list", "recipes")
    assert "poolformer_s12" in out and "attention" not in out


def test_user_component_in_list_and_schema(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "list", "components", "--kind", "token_mixer")
    assert "  cli_test_roll  - Rolls the map by ``shift`` pixels along its width" in out
    assert "      shift: int = 1" in out
    code, out = run(capsys, "schema")
    schema = json.loads(out)
    names, mapping = _token_mixer_choices(schema)
    assert "cli_test_roll" in names and "cli_test_roll" in mapping
    entry = schema["definitions"][mapping["cli_test_roll"].split("/")[-1]]
    assert entry["properties"]["shift"] == {"default": 1, "title": "Shift", "type": "integer"}
    assert entry["title"] == "cli_test_roll (token_mixer)" and entry["required"] == ["type"]


def _token_mixer_choices(schema: dict) -> tuple[list[str], dict[str, str]]:
    """The names and the discriminator mapping of a stage's token mixer (one value, or a list of them)."""
    one = schema["definitions"]["StageConfig"]["properties"]["token_mixer"]["anyOf"][0]
    by_name, union = one["anyOf"][0], one["anyOf"][1]
    return by_name["enum"], union["discriminator"]["mapping"]


def test_schema(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "recipe.schema.json"
    code, _ = run(capsys, "schema", "-o", str(out))
    assert code == 0
    schema = json.loads(out.read_text())
    assert {"stages", "stem", "head", "extends", "block", "stage_defaults", "downsample"} <= set(schema["properties"])
    names, mapping = _token_mixer_choices(schema)
    assert {"pooling", "attention", "sepconv"} <= set(names) and "pooling" in mapping
    code, text = run(capsys, "schema", "--resolved")
    strict = json.loads(text)
    assert "extends" not in strict["properties"] and strict["required"] == ["name", "stem", "stages"]


def test_schema_validates_recipes() -> None:
    """Every shipped recipe file passes the editor schema, resolved recipes the strict one; mistakes fail."""
    jsonschema = pytest.importorskip("jsonschema")
    editor, strict = editor_schema(), resolved_schema()
    for schema in (editor, strict):
        jsonschema.Draft7Validator.check_schema(schema)
    check_editor, check_strict = jsonschema.Draft7Validator(editor), jsonschema.Draft7Validator(strict)
    files = sorted(recipes_dir().rglob("*.yaml"))
    assert len(files) > 30
    for path in files:
        errors = [e.message for e in check_editor.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path}: {errors}"
    for name in ("poolformer_s12", "caformer_s18"):
        assert not list(check_strict.iter_errors(yaml.safe_load(metablocks.load_recipe(name).to_yaml())))
    user = {"extends": "poolformer_s12.yaml", "block": {"token_mixer": {"type": "cli_test_roll", "shift": 2}}}
    assert not list(check_editor.iter_errors(user))
    for wrong in ({"stagez": []},  # unknown key
                  {"block": {"token_mixer": {"type": "poolin"}}},  # unknown component
                  {"block": {"token_mixer": {"type": "cli_test_roll", "shift": "two"}}},  # wrong field type
                  {"block": {"token_mixer": {"type": "pooling", "kernel_size": 3}}},  # a field of another component
                  {"stages": [{"depth": 0, "dim": 64}]}):  # out of range
        assert list(check_editor.iter_errors(wrong)), wrong
    assert list(check_strict.iter_errors({"name": "x", "stem": "conv", "stages": [{"dim": 64}]}))  # depth missing


def test_console_script() -> None:
    script = Path(sys.executable).parent / "metablocks"
    assert script.exists(), "the package is not installed (pip install -e .)"
    done = subprocess.run([str(script), "list", "recipes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "caformer_s18" in done.stdout and "poolformer_s12" in done.stdout
    done = subprocess.run([sys.executable, "-m", "metablocks", "validate", "no_such_recipe"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "no recipe file or shipped recipe named 'no_such_recipe'" in done.stdout
