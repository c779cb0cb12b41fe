"""A normal (non-editable) install ships the recipes: create_model works from site-packages alone."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_shipped_recipes(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, capture_output=True)
    assert (target / "metablocks" / "_recipes" / "metaformer" / "caformer_s18.yaml").is_file()
    code = ("import metablocks; from metablocks.recipe import recipes_dir; "
            "m = metablocks.create_model('poolformer_s12'); "
            "print(recipes_dir(), sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout.split()
    assert out == [str(target / "metablocks" / "_recipes"), "11915176"]
