"""MOAT-0, MOAT-1 and tiny-MOAT-0 as recipes, held to the official TensorFlow code (google-research/deeplab2, which CI
cannot run): parameter counts equal the official Keras models' (measured with tensorflow-cpu 2.21 + tf_keras), every
official variable maps onto our state_dict with its shape (tests/data/moat_official_keys.json, dumped from the
official models), a micro MOAT built by the official code gives our logits from its weights
(tests/data/moat_official_micro.npz), MACs against deeplab2's table, the block structure, the converter's name
handling and the drop-path schedule. Both fixtures come from tests/data/moat_fixtures_from_deeplab2.py."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metablocks
from metablocks.blocks import Block
from metablocks.interop.moat_tf import convert, load_tf_moat
from metablocks.recipe.loader import load_recipe

DATA = Path(__file__).parent / "data"
SIZES = {  # recipe: (official trainable parameters, deeplab2's table: params_m, FLOPs (G), top1, resolution)
    "moat_0": (27_846_892, (27.8, 5.7, 83.3, 224)),
    "moat_1": (41_598_448, (41.6, 9.1, 84.2, 224)),
    "tiny_moat_0": (3_355_348, (3.4, 1.1, 76.6, 256)),
}
SLOW = [pytest.param("moat_0", marks=pytest.mark.slow), pytest.param("moat_1", marks=pytest.mark.slow)]
# the micro MOAT of the fixture: deeplab2's MOAT(stem_size=[8, 8], num_blocks=[2, 1, 2, 1], hidden_size=[8, 16, 16, 32],
# head_size=8, position_embedding_size=[None, None, 2, 2], 10 classes) at 48x48: odd maps (3x3, 2x2) and a resized table
MICRO = ["stem.channels=[8, 8]", "num_classes=10", "img_size=48", "stages[2].slots.attention.head_dim=8",
         "stages[3].slots.attention.head_dim=8", "stages[2].slots.attention.rel_pos_size=2",
         "stages[3].slots.attention.rel_pos_size=2",
         *(f"stages[{i}].depth={d}" for i, d in enumerate([2, 1, 2, 1])),
         *(f"stages[{i}].dim={d}" for i, d in enumerate([8, 16, 16, 32]))]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DATA / "moat_official_keys.json").read_text())


@pytest.fixture(scope="module")
def tiny():
    return metablocks.create_model("tiny_moat_0").eval()


@pytest.mark.parametrize("name", ["tiny_moat_0", *SLOW])
def test_params_equal_the_official_model(name: str, manifest: dict, tiny) -> None:
    model = tiny if name == "tiny_moat_0" else metablocks.create_model(name)
    official, (paper_m, *_) = SIZES[name]
    assert n_params(model) == official == manifest[name]["trainable_params"]
    trainable = sum(int(np.prod(shape)) for shape, is_trainable in manifest[name]["variables"].values() if is_trainable)
    assert trainable == official
    assert round(official / 1e6, 1) == paper_m  # deeplab2's table rounds to 0.1M: 27.8, 41.6, 3.4


@pytest.mark.parametrize("name", ["tiny_moat_0", *SLOW])
def test_every_official_variable_maps_onto_our_state_dict(name: str, manifest: dict, tiny) -> None:
    """Every deeplab2 variable (BN moving statistics included) lands on one of our tensors with its shape, and every
    tensor of ours but BN's step counters comes from one."""
    model = tiny if name == "tiny_moat_0" else metablocks.create_model(name)
    variables = {n: np.zeros(shape, np.float32) for n, (shape, _) in manifest[name]["variables"].items()}
    state = convert(variables)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in state.items()} == ours


def test_micro_moat_logits_equal_the_official_code() -> None:
    """Weights from deeplab2's own Keras model (non-default everywhere: BN statistics and affines, biases, position
    tables), loaded through the converter: the logits equal the official eval-mode logits."""
    data = np.load(DATA / "moat_official_micro.npz")
    model = metablocks.build_model("tiny_moat_0", overrides=MICRO).eval()
    variables = {k.removeprefix("tf:"): data[k].astype(np.float32) for k in data.files if k.startswith("tf:")}
    load_tf_moat(model, variables)
    assert n_params(model) == 27_442 == sum(v.size for k, v in variables.items() if "moving_" not in k)
    x = torch.from_numpy(data["input"].astype(np.float32)).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        logits = model(x).numpy()
    assert np.abs(logits - data["logits"]).max() <= 1e-5  # measured 1.2e-6 (logits up to 2.4)
    # the map sizes the fixture exercises: TF "same" padding on odd maps (3x3 -> 2x2) and a 3x3 table resized to 5x5
    assert [s.resolution for s in model.stages] == [(12, 12), (6, 6), (3, 3), (2, 2)]
    assert model.stages[2].blocks[0].attention.relative_position_embedding.shape == (2, 3, 3)


def test_structure(tiny) -> None:
    """MBConv stages: one branch, x = shortcut(x) + mbconv(BN(x)) with SE; MOAT stages add x + attention(LN(x)) and
    have no SE; every stage's first block strides by 2 and carries the shortcut; the stem keeps 32 channels, so the
    first shortcut of tiny-MOAT-0 is a pool without a conv."""
    first, moat = tiny.stages[0].blocks[0], tiny.stages[2].blocks[0]
    assert [n for n, _ in first.named_children()] == ["pre_bn", "token_mixer", "shortcut"]
    assert [n for n, _ in moat.named_children()] == ["pre_bn", "token_mixer", "shortcut", "pre_ln", "attention"]
    assert isinstance(first.shortcut.conv, torch.nn.Identity) and first.shortcut.stride == 2
    assert isinstance(moat.token_mixer.se, torch.nn.Identity) and not isinstance(first.token_mixer.se, torch.nn.Identity)
    assert all("shortcut" not in dict(b.named_children()) for s in tiny.stages for b in list(s.blocks)[1:])
    assert [s.resolution for s in tiny.stages] == [(64, 64), (32, 32), (16, 16), (8, 8)]  # at 256
    assert [b.attention.relative_position_embedding.shape[1] for b in (moat, tiny.stages[3].blocks[0])] == [27, 13]
    assert [b.attention.num_heads for b in (moat, tiny.stages[3].blocks[0])] == [4, 8]  # head_dim 32


def test_recipes_record_deeplab2s_table() -> None:
    for name, (_, (params_m, flops_g, top1, resolution)) in SIZES.items():
        recipe = load_recipe(name)
        assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == (params_m, flops_g, top1)
        assert recipe.paper.resolution == resolution == recipe.img_size[0] and recipe.timm_name is None
    assert [s.depth for s in load_recipe("moat_1").stages] == [2, 6, 14, 2]


@pytest.mark.parametrize("name", ["tiny_moat_0", *SLOW])
def test_macs_match_deeplab2s_table(name: str, tiny) -> None:
    """Ours at the table's resolution: MOAT-0 5.688, MOAT-1 9.071, tiny-MOAT-0 1.063 G (the table: 5.7, 9.1, 1.1)."""
    from metablocks.analysis import count_macs

    model = tiny if name == "tiny_moat_0" else metablocks.create_model(name)
    _, (_, flops_g, _, resolution) = SIZES[name]
    gmacs = count_macs(model, (3, resolution, resolution)).total / 1e9
    assert round(gmacs, 1) == flops_g, gmacs


def test_drop_path_schedule_equals_deeplab2s() -> None:
    """deeplab2: block k of N drops with (1 - survival) * k / N on both residuals; ours linspace(0, r, N)."""
    with torch.device("meta"):
        model = metablocks.create_model("moat_0")
    rates = [getattr(b, "drop_path1", None) for s in model.stages for b in s.blocks]
    got = [0.0 if m is None else m.p for m in rates]
    assert np.allclose(got, [0.2 * k / 14 for k in range(14)], atol=1e-7)
    moat_block = model.stages[2].blocks[3]
    assert moat_block.drop_path1.p == moat_block.drop_path2.p


def test_converter_reads_checkpoint_names() -> None:
    """Released checkpoints scope the stem under moat/stem/ and keep EMA copies beside the raw weights."""
    raw = {"moat/stem/conv_0/kernel": np.ones((3, 3, 3, 4), np.float32),
           "moat/stem/conv_0/kernel/ExponentialMovingAverage": np.full((3, 3, 3, 4), 2.0, np.float32),
           "moat/final_layer_norm/gamma:0": np.ones(4, np.float32)}
    assert convert(raw)["stem.conv1.weight"].shape == (4, 3, 3, 3) and convert(raw)["stem.conv1.weight"].max() == 1
    assert convert(raw, ema=True)["stem.conv1.weight"].max() == 2 and "head.norm.weight" in convert(raw, ema=True)
    with pytest.raises(KeyError, match="unexpected deeplab2 MOAT variable 'moat/extra/w'"):
        convert({"moat/extra/w": np.ones(1)})


def test_other_resolutions_and_windows(tiny) -> None:
    """Any input size runs (the tables are resized again, as deeplab2 builds its model for the size it is given);
    deeplab2's windowed attention for dense tasks is a recipe edit, checked against the map."""
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 100, 100)).shape == (1, 1000)
    with torch.device("meta"):
        windowed = metablocks.build_model("tiny_moat_0", overrides=[
            "img_size=128", "stages[2].slots.attention.window_size=[4, 4]", "stages[3].slots.attention.window_size=[2, 2]"])
    assert windowed.stages[2].blocks[1].attention.windowed
    with pytest.raises(metablocks.RecipeError, match=r"stages\[2\].*does not split into 3x3 windows"):
        metablocks.build_model("tiny_moat_0", overrides=["img_size=128", "stages[2].slots.attention.window_size=[3, 3]"])
    assert all(isinstance(b, Block) for b in tiny.stages[0].blocks)


def test_micro_moat_scripts_and_traces() -> None:
    """TorchScript and torch.fx take the same-padding convs and pools, the resized position tables and the windows
    (the shipped sizes are in the slow tests/test_script_fx.py battery)."""
    import warnings

    fx = pytest.importorskip("torchvision.models.feature_extraction")
    model = metablocks.build_model("tiny_moat_0", overrides=[*MICRO, "stages[2].slots.attention.window_size=[3, 3]"]).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), expected, atol=1e-5)
        traced = fx.create_feature_extractor(model, return_nodes=[fx.get_graph_node_names(model)[1][-1]])
        assert torch.allclose(next(iter(traced(x).values())), expected, atol=1e-6)
        other = torch.randn(1, 3, 96, 40)  # eager and TorchScript follow another size (pads, tables: 6x3, 3x2 maps)
        assert torch.allclose(scripted(other), model(other), atol=1e-5)
