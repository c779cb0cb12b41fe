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
                  {"stages": [{"depth": -1, "dim": 64}]}):  # out of range
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


# -- one CLI style (issue 10, point 7) ---------------------------------------------------------------------------


def test_help_shows_each_default_once_and_every_command_takes_plugin() -> None:
    from metablocks.cli import HelpFormatter, _all_parsers, parser

    parsers = _all_parsers(parser())
    helps = {p.prog: p.format_help() for p in parsers}
    assert {"metablocks", "metablocks train", "metablocks sweep run", "metablocks info", "metablocks zoo"} <= set(helps)
    for p in parsers:
        assert p.formatter_class is HelpFormatter and "--plugin FILE|MODULE" in helps[p.prog], p.prog
        formatter = p._get_formatter()
        for action in p._actions:
            if action.help and action.help != "==SUPPRESS==":
                assert formatter._expand_help(action).count("default") <= 1, (p.prog, action.option_strings)
    train = " ".join(helps["metablocks train"].split())
    assert "--epochs INT (default 10)" in train and "--set PATH=VALUE" in train and "--override" not in train
    assert "--crop-padding CROP_PADDING random translation in pixels (0: none) (default: 2)" in train
    assert "(default: None)" not in " ".join(helps.values())


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"metablocks {metablocks.__version__}\n"


def test_set_is_the_override_flag_of_every_recipe_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from metablocks.cli import parser

    root = parser()
    for argv in (["train", "r"], ["info", "r"], ["validate", "r"], ["export", "r"], ["sweep", "plan", "s"],
                 ["sweep", "run", "s"]):
        assert root.parse_args([*argv, "--set", "a=1", "--set", "b=2"]).overrides == ["a=1", "b=2"], argv
    assert root.parse_args(["train", "r", "--override", "a=1"]).overrides == ["a=1"]  # the old name still works
    code, out = run(capsys, "validate", "poolformer_s12", "--set", "stages[3].token_mixer.type=attention")
    recipe = metablocks.load_recipe("poolformer_s12", ["stages[3].token_mixer.type=attention"])
    assert code == 0 and out.strip() == f"ok poolformer_s12 ({recipe.model_id})"


def test_json_outputs(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "info", "poolformer_s12", "--json")
    info = json.loads(out)
    assert code == 0 and info["params"] == 11_915_176 and info["macs"] == 1_822_555_648 and info["input"] == [3, 224, 224]
    assert [s["stage"] for s in info["stages"]] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert info["stages"][3] == {"stage": "stages.2", "depth": 6, "dim": 320, "token_mixer": "pooling",
                                 "channel_mixer": "mlp", "output": [320, 14, 14], "params": info["stages"][3]["params"],
                                 "macs": info["stages"][3]["macs"]}
    assert info["paper"]["params_m"] == 12 and info["architecture_changed"] is False
    code, out = run(capsys, "list", "--json")
    listed = json.loads(out)
    assert len(listed["recipes"]) == len(metablocks.list_recipes())
    s12 = next(r for r in listed["recipes"] if r["name"] == "poolformer_s12")
    assert s12["timm_name"] == "poolformer_s12" and s12["paper"]["top1"] == 77.2
    pooling = next(c for c in listed["components"]["token_mixer"] if c["name"] == "pooling")
    assert pooling["fields"]["pool_size"] == {"type": "int", "default": 3}
    code, out = run(capsys, "zoo", "--json", "--filter", "poolformer_s12", "--no-timm")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["poolformer_s12"]
    assert rows[0]["params"] == 11_915_176 and rows[0]["ok"] is True and rows[0]["timm"] == "not checked"


SWEEP_SPEC = """\
name: cli_sweep
base: poolformer_s12
axes:
  - {path: "stages[3].token_mixer", values: [pooling, identity], name: mixer}
data: {source: synthetic, img_size: 32, num_classes: 4, train_size: 16, val_size: 8}
train: {epochs: 1, batch_size: 8, threads: 1}
"""


def test_sweep_plan_json_and_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP_SPEC)
    code, out = run(capsys, "sweep", "plan", str(spec), "--json", "--set", "seeds=[3, 4]", "--set", "train.epochs=2",
                    "--set", "stages[0].dim=48")
    runs = json.loads(out)
    assert code == 0 and [(r["labels"]["mixer"], r["seed"]) for r in runs] == [
        ("pooling", 3), ("pooling", 4), ("identity", 3), ("identity", 4)]
    assert runs[0]["train"]["epochs"] == 2 and runs[0]["recipe"]["stages"][0]["dim"] == 48
    code, out = run(capsys, "sweep", "plan", str(spec), "--set", "train.epochz=2")
    assert code == 2 and "--set: train.epochz: unknown field 'epochz' (did you mean 'epochs'?)" in out


def test_sweep_help_documents_the_spec(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    for key in ("base: my_recipe.yaml", "overrides:", "axes:", "mode: grid", "samples:", "seeds:", "labels:",
                "docs/sweep-spec.md", "train.", "zip", "random"):
        assert key in text, key
    doc = (Path(__file__).resolve().parents[1] / "docs" / "sweep-spec.md").read_text()
    for key in ("## Axes", "## Modes", "samples", "## Overrides", "base: ", "--set", "metablocks validate"):
        assert key in doc, key


def test_validate_recognises_a_sweep_spec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP_SPEC)
    code, out = run(capsys, "validate", str(spec))
    assert code == 0 and out.strip() == f"ok {spec} (sweep cli_sweep: 2 runs = 2 configurations x 1 seed(s))"
    spec.write_text(SWEEP_SPEC.replace("identity]", "identty]").replace("epochs: 1", "epochs: 1, lrr: 1"))
    code, out = run(capsys, "validate", str(spec), "poolformer_s12")
    assert code == 2 and out.startswith(f"FAIL {spec}\ninvalid sweep")
    assert f"{spec}:6: train.lrr: unknown field 'lrr' (did you mean 'lr'?)" in out
    assert out.strip().endswith("1 of 2 files valid")


def test_user_mistakes_end_in_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from metablocks.sweep import ResultStore

    code, out = run(capsys, "sweep", "report", str(tmp_path / "missing"))
    assert (code, out) == (2, f"error: {tmp_path / 'missing'} does not exist: no sweep there\n")
    code, out = run(capsys, "sweep", "plan", str(tmp_path / "missing.yaml"))
    assert code == 2 and out == f"error: invalid sweep:\n  {tmp_path / 'missing.yaml'}: no such sweep spec file\n"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP_SPEC)
    held = ResultStore(tmp_path / "locked").lock()
    try:
        code, out = run(capsys, "sweep", "run", str(spec), "--out", str(tmp_path / "locked"))
    finally:
        held.unlock()
    assert (code, out) == (2, f"error: another process is running the sweep in {(tmp_path / 'locked').resolve()}\n")
    code, out = run(capsys, "sweep", "run", str(spec), "--workers", "0")
    assert (code, out) == (2, "error: --workers must be at least 1, given 0\n")
    code, out = run(capsys, "train", "poolformer_s12", "--data", "imagefolder")
    assert (code, out) == (2, "error: --data imagefolder reads a local directory: give it with --data-path DIR\n")
    code, out = run(capsys, "train", "poolformer_s12", "--threads", "0")
    assert code == 2 and out.startswith("error: invalid TrainConfig: threads: Input should be greater than or equal to 1")
    code, out = run(capsys, "info", str(tmp_path / "nope.yaml"))
    assert code == 2 and out.startswith("error: invalid recipe:\n") and "cannot read recipe: No such file" in out
    with pytest.raises(SystemExit) as exit_:  # argparse's own: usage and one line, status 2
        main(["sweep", "run", str(spec), "--workers", "two"])
    assert exit_.value.code == 2 and "argument --workers: invalid int value: 'two'" in capsys.readouterr().err


def test_closed_pipe_is_quiet() -> None:
    """`metablocks list | head -1`: the reader leaves early; no traceback, no 'Exception ignored', status 141."""
    proc = subprocess.Popen([sys.executable, "-m", "metablocks.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().startswith(b"recipes (")
    proc.stdout.close()
    err = proc.stderr.read()
    # 141 when the writer met the closed pipe; 0 when the whole listing fit in the pipe before the reader closed it
    # (a race on a loaded machine): quiet either way
    assert proc.wait(timeout=120) in (0, 141) and err == b""


# -- small things (issue 10, point 9) ----------------------------------------------------------------------------


def test_info_shows_the_papers_numbers_only_for_the_shipped_architecture(capsys: pytest.CaptureFixture) -> None:
    code, out = run(capsys, "info", "poolformer_s12", "--set", "stages[3].token_mixer.type=attention")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("poolformer_s12 (changed by --set)  (model_id ")
    assert "total: 14.0M params (14,012,328)" in out
    assert ("paper: not shown: --set changed the architecture, and the paper's numbers are for poolformer_s12 as "
            "shipped (see 'metablocks info poolformer_s12')") in lines
    assert not any(line.startswith("paper: 12M") for line in lines)
    # an override that leaves the architecture as it is, and another input size, keep the paper's line
    code, out = run(capsys, "info", "poolformer_s12", "--set", "stages[0].depth=2", "--input", "160")
    assert code == 0 and "paper: 12M params, 1.8G MACs, 77.2% top-1 at 224x224" in out and "changed" not in out
    code, out = run(capsys, "info", "poolformer_s12", "--set", "num_classes=10", "--json")
    assert json.loads(out)["paper"] is None and json.loads(out)["architecture_changed"] is True


def test_one_seed_has_no_spread_in_the_table() -> None:
    from metablocks.sweep.results import aggregate, markdown_table

    base = {"config": "mixer=a", "labels": {"mixer": "a"}, "status": "ok", "params": 1000, "macs": 2_000_000}
    one = markdown_table(aggregate([{**base, "seed": 0, "top1": 80.0}]), ["mixer"]).splitlines()[2]
    assert one.startswith("| a | 1.0 | 2.00 | 80.00 | 1/1 |")
    two = markdown_table(aggregate([{**base, "seed": 0, "top1": 80.0}, {**base, "seed": 1, "top1": 90.0}]),
                         ["mixer"]).splitlines()[2]
    assert two.startswith("| a | 1.0 | 2.00 | 85.00 ± 7.07 | 2/2 |")


def test_learning_curve_ticks_are_whole_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from metablocks.sweep.plots import plot_curves

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    rows = [{"config": "mixer=a", "mixer": "a", "ok": 1, "curve_top1": [50.0, 60.0], "curve_train_loss": [2.0, 1.5]}]
    plot_curves(rows, "mixer", tmp_path, "t")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0, 2.0], ticks


def test_progress_inside_a_long_epoch() -> None:
    import io

    from metablocks.train.progress import RunProgress

    stream = io.StringIO()
    progress = RunProgress("run", total_steps=10, done_steps=0, bars=False, stream=stream)
    progress.line_every_s = 0.0  # a line at every step (30 s apart by default)
    progress.step(1.25)
    progress.step(1.0)
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["run: step 1/10", "run: step 2/10"]
    assert "loss 1.2500" in lines[0] and "eta " in lines[0]
    quiet = io.StringIO()
    silent = RunProgress("run", total_steps=10, done_steps=0, bars=False, stream=quiet, enabled=False)
    silent.line_every_s = 0.0
    silent.step(1.0)
    assert quiet.getvalue() == ""


def test_bench_takes_set(capsys):
    code = main(["bench", "poolformer_s12", "--set", "stages[3].token_mixer=identity", "--repeats", "1", "--warmup", "0",
                 "--batch", "1", "--train-batch", "0", "--img-size", "32", "--no-memory"])
    assert code == 0
    assert "| poolformer_s12 with --set stages[3].token_mixer=identity | ours |" in capsys.readouterr().out
    code = main(["bench", "poolformer_s12", "--set", "stages[3].token_mixer=identity", "--vs-timm"])
    assert code == 2
    assert capsys.readouterr().err == ("error: --set changes the architecture of poolformer_s12, so there is no timm "
                                       "model with the same weights to compare with; drop --vs-timm (or the --set)\n")
