"""Every YAML fragment of docs/writing-a-block.md loads, builds and runs (the page shows the real grammar)."""
import re
from pathlib import Path

import pytest
import torch
import yaml

import metablocks

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-block.md"
FRAGMENTS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_its_fragments() -> None:
    assert len(FRAGMENTS) == 8


@pytest.mark.parametrize("index", range(len(FRAGMENTS)))
def test_fragment_builds_and_runs(index: int) -> None:
    fragment = yaml.safe_load(FRAGMENTS[index])
    recipe = {"name": f"doc{index}", "img_size": 32, "num_classes": 5,
              "stem": {"type": "conv", "kernel_size": 2, "stride": 2, "padding": 0},
              "stages": [{"depth": 2, "dim": 16}], **fragment}
    model = metablocks.build_model(recipe).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
