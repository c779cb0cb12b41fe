"""Property tests: what validates builds and runs; what does not gets a located RecipeError, never a raw exception.

The random recipes come from every component metablocks registers (tests/recipe_fuzz.py draws each field from its
own type and bounds), so a component added later is fuzzed without anyone remembering to. The default suite runs a
fixed, small sample; ``-m slow`` runs thousands of fresh ones and prints the counts.
"""
from __future__ import annotations

import collections
import copy
import random

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings

import metablocks
from metablocks import RecipeError, load_recipe
from recipe_fuzz import HOSTILE_VALUES, holds, recipes, shipped_configs

COUNTS: collections.Counter = collections.Counter()
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
MANY = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@FAST
@given(recipes())
def test_valid_recipes_build_and_run(raw):
    COUNTS[holds(raw)] += 1


@pytest.mark.slow
@MANY
@given(recipes())
def test_valid_recipes_build_and_run_many(raw):
    COUNTS[holds(raw)] += 1


@pytest.mark.slow
def test_report_counts(capsys):
    with capsys.disabled():
        print(f"\nrandom recipes: {dict(COUNTS)}")


def test_every_kind_is_drawn():
    for kind in ("token_mixer", "channel_mixer", "norm", "act", "stem", "downsample", "head"):
        assert len(shipped_configs(kind)) >= 2, kind


def _leaves(node, path=""):
    """(override path, value) of every scalar and component in a resolved recipe."""
    if isinstance(node, dict):
        if "type" in node and path:
            yield path, node
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, node


def mutate_and_load(name: str, rng: random.Random, tries: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    leaves = [(p, v) for p, v in _leaves(load_recipe(name).dump()) if not p.startswith(("paper", "description"))]
    for _ in range(tries):
        path, _old = rng.choice(leaves)
        value = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        try:
            load_recipe(name, {path: value})
            counts["accepted"] += 1
        except RecipeError as err:
            assert err.problems and all(p.path for p in err.problems), f"{path}={value!r}: unlocated {err}"
            counts["located error"] += 1
    return counts


@pytest.mark.parametrize("name", ["poolformer_s12", "swin_t", "resnet50", "mixer_s16_224", "wavemix_192_16"])
def test_mutated_shipped_recipes_give_located_errors(name):
    counts = mutate_and_load(name, random.Random(name), 25)
    assert counts["located error"] >= 10, counts


@pytest.mark.slow
def test_mutated_every_shipped_recipe():
    total: collections.Counter = collections.Counter()
    for name in metablocks.list_recipes():
        total += mutate_and_load(name, random.Random(name), 40)
    print(f"\nmutations: {dict(total)}")


def test_mutated_files_give_located_errors(tmp_path):
    """The same mutations written into a child file: the error names that file and line."""
    rng = random.Random(0)
    for i in range(30):
        value = rng.choice(HOSTILE_VALUES)
        key = rng.choice(["depth", "dim", "token_mixer", "channel_mixer", "norm", "layer_scale", "downsample"])
        text = yaml.safe_dump({"extends": "poolformer_s12", "stages": {1: {key: value}}}, default_flow_style=False)
        path = tmp_path / f"m{i}.yaml"
        path.write_text(text)
        try:
            load_recipe(path)
        except RecipeError as err:
            assert all(p.path and p.file for p in err.problems), err
            assert any(p.file == str(path) for p in err.problems) or "no effect" in str(err), err


def test_a_stem_layer_that_leaves_no_map_is_located() -> None:
    """Found by the slow property run: a 13x13 unpadded conv on a 12x12 input leaves no map, and the next layer's
    padding gave the stack a 1x1 output again, so only the last layer was checked (a raw torch error on build)."""
    raw = {"name": "fuzz", "in_chans": 1, "img_size": 12, "num_classes": 0,
           "stem": {"type": "conv_stack", "layers": [{"kernel_size": 13, "padding": 0, "width": 0.25}, {"kernel_size": 2}]},
           "stages": [{"depth": 0, "dim": 4}], "head": "linear"}
    assert holds(raw) == "rejected"
    with pytest.raises(metablocks.RecipeError, match=r"stem: stem 'conv_stack': a 12x12 input is too small for this stack of convolutions "
                                                     r"\(layers\[0\], a 13x13 conv, leaves no map\)"):
        metablocks.load_recipe(raw)
