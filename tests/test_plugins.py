"""A user's components in the CLI: ``--plugin FILE|MODULE`` and ``METABLOCKS_PLUGINS`` for every command (worker
processes included); a clash with a shipped name fails at the user's ``register`` call."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metablocks import registry
from metablocks.cli import main

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''\
"""Mixers of a user's own (a test plugin)."""
import torch
from torch import nn

import metablocks


@metablocks.register("token_mixer", "{name}")
class WidthRoll(nn.Module):
    """Rolls the map by ``shift`` pixels along its width."""

    def __init__(self, dim: int, *, shift: int = 1) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, self.shift, dims=-1)
'''

RECIPE = """\
extends: poolformer_s12.yaml
stage_defaults: [{{}}, {{}}, {{}}, {{token_mixer: {{type: {name}, shift: 2}}}}]
"""


def make_plugin(tmp_path: Path, name: str) -> tuple[Path, Path]:
    plugin = tmp_path / f"{name}_mixers.py"
    plugin.write_text(PLUGIN.format(name=name))
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(name=name))
    return plugin, recipe


@pytest.fixture(autouse=True)
def _plugins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main(["--plugin", ...])`` hands its plugins on through the environment: restore it after each test."""
    monkeypatch.setenv("METABLOCKS_PLUGINS", "")


def cli(*argv: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "METABLOCKS_PLUGINS"}
    environment.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "metablocks.cli", *argv], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=300)


def test_unknown_type_hints_at_plugins(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, recipe = make_plugin(tmp_path, "never_loaded_roll")
    assert main(["validate", str(recipe)]) == 2
    out = capsys.readouterr().out
    assert f"{recipe}:2: stages[3].token_mixer: unknown token_mixer 'never_loaded_roll'; allowed: aggregated_attention, attention," in out
    assert out.rstrip().endswith("window_attention (a component of your own is known once its file is loaded: --plugin "
                                 "my_mixers.py (any metablocks command) or METABLOCKS_PLUGINS=my_mixers.py) "
                                 "(set at stage_defaults[3].token_mixer)")


def test_a_new_process_knows_the_mixer_through_plugin_or_environment(tmp_path: Path) -> None:
    plugin, recipe = make_plugin(tmp_path, "plug_roll")
    given = cli("--plugin", str(plugin), "info", str(recipe), "--json")  # before the command's name, or after it
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["stages"][4]["token_mixer"] == "plug_roll(shift=2)"
    from_env = cli("list", "components", "--kind", "token_mixer", env={"METABLOCKS_PLUGINS": str(plugin)})
    assert "  plug_roll  - Rolls the map by ``shift`` pixels along its width." in from_env.stdout
    assert "      shift: int = 1" in from_env.stdout


def test_plugin_file_and_module_in_process(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plugin, recipe = make_plugin(tmp_path, "inproc_roll")
    assert main(["schema", "--plugin", str(plugin)]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "inproc_roll (token_mixer)" in json.dumps(schema)
    assert os.environ["METABLOCKS_PLUGINS"] == str(plugin.resolve())  # handed on to worker processes
    assert main(["info", str(recipe), "--plugin", str(plugin)]) == 0  # loaded once: no clash with itself
    assert "inproc_roll(shift=2)" in capsys.readouterr().out
    # a module by name, found in the working directory
    (tmp_path / "mod_roll_mixers.py").write_text(PLUGIN.format(name="mod_roll"))
    monkeypatch.chdir(tmp_path)
    assert main(["list", "components", "--kind", "token_mixer", "--plugin", "mod_roll_mixers"]) == 0
    assert "  mod_roll  - Rolls the map" in capsys.readouterr().out


def test_plugin_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert capsys.readouterr().err == f"error: plugin file '{tmp_path / 'missing.py'}' does not exist\n"
    assert main(["list", "--plugin", "no_such_module_xyz"]) == 2
    assert capsys.readouterr().err == ("error: plugin 'no_such_module_xyz' is neither a file nor an importable module "
                                       "(no module named 'no_such_module_xyz'; a file needs its .py)\n")
    broken = tmp_path / "broken_mixers.py"
    broken.write_text("import metablocks\n\nvalue = undefined_name\n")
    assert main(["list", "--plugin", str(broken)]) == 2
    assert capsys.readouterr().err == (f"error: plugin '{broken}' failed while it was imported: NameError: name "
                                       f"'undefined_name' is not defined (at {broken}:3: value = undefined_name)\n")


def test_shipped_name_fails_at_the_users_register_call(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clash = tmp_path / "clash_mixers.py"
    clash.write_text(textwrap.dedent('''\
        from torch import nn
        import metablocks

        @metablocks.register("token_mixer", "pooling")
        class MyPooling(nn.Module):
            def __init__(self, dim: int) -> None:
                super().__init__()
        '''))
    assert main(["validate", "poolformer_s12", "--plugin", str(clash)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: plugin '{clash}' failed while it was imported: RegistryError: token_mixer 'pooling' "
                          "is already registered, shipped with metablocks "
                          "(metablocks.components.token_mixers.pooling.Pooling); give yours another name")
    assert f"(at {clash}:4: @metablocks.register(\"token_mixer\", \"pooling\"))" in err
    assert registry.get("token_mixer", "pooling").module.__module__ == "metablocks.components.token_mixers.pooling"


def test_register_loads_the_shipped_components_first() -> None:
    """In a fresh process, a user's register() of a shipped name fails right there, before any recipe is read."""
    code = textwrap.dedent('''\
        from torch import nn
        import metablocks
        try:
            metablocks.register("token_mixer", "sepconv")(type("Mine", (nn.Module,), {}))
        except metablocks.registry.RegistryError as err:
            print("refused:", err)
        print(metablocks.load_recipe("convformer_s18").stages[0].token_mixer[0].name)
        ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "refused: token_mixer 'sepconv' is already registered, shipped with metablocks "
        "(metablocks.components.token_mixers.sepconv.SepConv); give yours another name, or pass replace=True to "
        "override it", "sepconv"]


SWEEP = """\
name: plugin_sweep
base:
  name: tiny_plugin_base
  stem: {{type: conv, kernel_size: 3, stride: 2, padding: 1}}
  downsample: {{type: conv}}
  block: {{norm: {{type: groupnorm, num_groups: 1}}}}
  stages: [{{depth: 1, dim: 8}}, {{depth: 1, dim: 16}}]
axes:
  - {{path: "stages[1].token_mixer", values: [pooling, {{type: {name}, shift: 2}}], name: mixer}}
data: {{source: synthetic, img_size: 16, num_classes: 4, train_size: 32, val_size: 16}}
train: {{epochs: 1, batch_size: 16, threads: 1}}
measure: {{batch_size: 4, warmup: 0, iters: 1, speed: false}}
"""


class InlineProcess:
    """A stand-in for a spawned worker process that runs its target at start(), in this process."""

    def __init__(self, target, args, daemon) -> None:
        self.target, self.args, self.exitcode = target, args, None

    def start(self) -> None:
        self.target(*self.args)
        self.exitcode = 0

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass


def test_worker_processes_are_told_no_progress(tmp_path: Path, capfd: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What --workers 2 hands each worker: with --no-progress no lines, without it one line per epoch."""
    from metablocks.sweep import executor

    monkeypatch.setattr(executor.mp, "get_context", lambda method: type("Spawn", (), {"Process": InlineProcess}))
    monkeypatch.setattr(executor, "_die_with_parent", lambda: None)
    plugin, _ = make_plugin(tmp_path, "inline_roll")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP.format(name="inline_roll"))
    args = ["sweep", "run", str(spec), "--workers", "2", "--plugin", str(plugin)]
    assert main([*args, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "epoch 1/1" not in capfd.readouterr().err
    assert main([*args, "--out", str(tmp_path / "talkative")]) == 0
    err = capfd.readouterr().err
    assert "mixer=pooling seed=0: epoch 1/1 train_loss" in err and "mixer=inline_roll(shift=2) seed=0: epoch 1/1" in err


@pytest.mark.slow
def test_sweep_workers_load_the_plugin_and_honour_no_progress(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Two worker processes (spawned: they know only what the environment tells them) train a run each, one with the
    plugin's mixer; --no-progress silences them as well."""
    plugin, _ = make_plugin(tmp_path, "worker_roll")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP.format(name="worker_roll"))
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--workers", "2", "--no-progress", "--plugin",
                 str(plugin)]) == 0
    assert "epoch 1/1" not in capfd.readouterr().err  # no worker printed progress
    records = {r["labels"]["mixer"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {k: r["status"] for k, r in records.items()} == {"pooling": "ok", "worker_roll(shift=2)": "ok"}
    assert records["worker_roll(shift=2)"]["recipe_name"] == "tiny_plugin_base"


def test_readme_example_plugin_validates_and_plans(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's commands for the example mixer file, recipe and sweep."""
    monkeypatch.chdir(ROOT)
    plugin = "examples/custom_mixer.py"
    assert main(["validate", "examples/custom_mixer.yaml", "examples/custom_mixer_sweep.yaml", "--plugin", plugin]) == 0
    out = capsys.readouterr().out
    assert "ok examples/custom_mixer_sweep.yaml (sweep custom_mixer_sweep: 3 runs = 3 configurations x 1 seed(s))" in out
    assert main(["sweep", "plan", "examples/custom_mixer_sweep.yaml", "--macs", "--plugin", plugin]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].split()[:2] == ["0", "global_context"] and rows[2].split()[-2:] == ["249.1K", "8.9M"]


@pytest.mark.slow
def test_readme_example_sweep_runs_with_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    quick = ["--set", "train.epochs=1", "--set", "data.limit_train=64", "--set", "data.limit_val=32"]
    assert main(["sweep", "run", "examples/custom_mixer_sweep.yaml", "--out", str(tmp_path), "--workers", "2",
                 "--no-progress", "--plugin", "examples/custom_mixer.py", *quick]) == 0
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((r["labels"]["mixer"], r["status"]) for r in records) == [
        ("global_context", "ok"), ("identity", "ok"), ("pooling", "ok")]
    assert next(r for r in records if r["labels"]["mixer"] == "global_context")["params"] == 249_116


def test_the_same_file_run_again_replaces_its_components(tmp_path: Path) -> None:
    """A plugin file that is also run as a script (or with runpy) registers the same classes again: no clash."""
    import runpy

    plugin, _ = make_plugin(tmp_path, "twice_roll")
    registry.load_plugin(str(plugin))
    first = registry.get("token_mixer", "twice_roll")
    again = runpy.run_path(str(plugin))["WidthRoll"]
    assert registry.get("token_mixer", "twice_roll").module is again is not first.module
    other = tmp_path / "other_mixers.py"
    other.write_text(PLUGIN.format(name="twice_roll"))  # the same name from another file still clashes
    with pytest.raises(registry.PluginError, match="token_mixer 'twice_roll' is already registered, by "):
        registry.load_plugin(str(other))
