"""ECA-Net (Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks", CVPR 2020) as
recipes: timm's ECA-ResNet-Ds (``ecaresnet26t/50d/101d/light``: deep stem, avg-down shortcut, adaptive-k ECA in every
bottleneck) equal to timm weight for weight, and the paper's ECA-Net50/101/152 held to the official code
(github.com/BangguWu/ECANet, fixed k per stage 3557 / 3357).

The official code is not available in CI: tests/data/eca_resnet_official_keys.json holds its parameter counts and
ECA-Net50's state_dict key/shape list, produced once from it. With ``ECANET_REF=/path/to/ECANet`` the logits of the
official model (perturbed weights) are compared too.
"""
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import metablocks
from metablocks import RecipeError
from metablocks.components.channel_mixers.eca import EfficientChannelAttention, adaptive_kernel
from metablocks.interop.families.resnet import convert_resnet, resnet_key
from metablocks.interop.official import convert_official
from metablocks.interop.timm import load_timm_state_dict
from zoo_timm import n_params, perturb

timm = pytest.importorskip("timm")

OFFICIAL = json.loads((Path(__file__).parent / "data" / "eca_resnet_official_keys.json").read_text())
TIMM_PARAMS = {"ecaresnet26t": 16_011_916, "ecaresnet50d": 25_576_350, "ecaresnet50t": 25_573_814,
               "ecaresnetlight": 30_162_046, "ecaresnet101d": 44_568_563}  # timm 1.0.31's counts, which ours must equal


def meta_model(name: str) -> metablocks.MetaModel:
    with torch.device("meta"):
        return metablocks.create_model(name)


def perturb_all(model: torch.nn.Module, seed: int = 1) -> None:
    """``perturb`` (norm affines, BN statistics) and the ECA convs, whose (1, 1, k) weights it leaves alone."""
    perturb(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv1d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))


def timm_logit_diff(name: str, size: int, batch: int = 1) -> float:
    ours, theirs = metablocks.create_model(name).eval(), timm.create_model(name).eval()
    assert ours.recipe.timm_name == name
    perturb_all(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max().item() > 0.1  # the perturbed blocks really move the logits
    return (got - expected).abs().max().item()


# --- parameters -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TIMM_PARAMS))
def test_params_equal_timm(name: str) -> None:
    with torch.device("meta"):
        theirs = timm.create_model(name)
    assert n_params(meta_model(name)) == n_params(theirs) == TIMM_PARAMS[name]


@pytest.mark.parametrize("name", list(OFFICIAL["params"]))
def test_params_equal_the_official_code(name: str) -> None:
    assert n_params(meta_model(name)) == OFFICIAL["params"][name]  # 25,557,112 / 44,549,317 / 60,193,042


def test_official_kernels_per_stage_and_the_readme_units() -> None:
    for name, kernels in [("eca_resnet50", [3, 5, 5, 7]), ("eca_resnet101", [3, 3, 5, 7]), ("eca_resnet152", [3, 3, 5, 7])]:
        model = meta_model(name)
        assert [{b.token_mixer.se.kernel_size for b in s.blocks} for s in model.stages] == [{k} for k in kernels]
    # the README's "24.37M" is the official count over 2**20 (paras_flops.py's clever_format divides by 1024 ** 2)
    assert round(OFFICIAL["params"]["eca_resnet50"] / 2 ** 20, 2) == 24.37
    assert round(OFFICIAL["params"]["eca_resnet101"] / 2 ** 20, 2) == 42.49


# --- logits vs timm -------------------------------------------------------------------------------------------------

def test_ecaresnet26t_equals_timm() -> None:
    assert timm_logit_diff("ecaresnet26t", 96) <= 1e-5  # small input: the default suite stays fast


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM_PARAMS))
def test_equal_to_timm_at_224(name: str) -> None:
    assert timm_logit_diff(name, 224, batch=2) <= 1e-5


def test_pretrained_cfg_mirrors_timm() -> None:
    for name in TIMM_PARAMS:
        cfg, theirs = meta_model(name).pretrained_cfg, timm.models.get_pretrained_cfg(name).to_dict()
        for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "num_classes", "pool_size",
                    "tag"):
            assert cfg[key] == theirs[key], (name, key)
    assert meta_model("ecaresnet26t").pretrained_cfg["input_size"] == (3, 256, 256)  # timm evaluates the T models at 256


def test_timm_deep_stem_and_avg_down_keys() -> None:
    assert resnet_key("conv1.0.weight", deep_stem=3) == "stem.conv1.weight"
    assert resnet_key("conv1.4.running_var", deep_stem=3) == "stem.bn2.running_var"
    assert resnet_key("conv1.6.weight", deep_stem=3) == "stem.conv3.weight"
    assert resnet_key("bn1.bias", deep_stem=3) == "stem.bn3.bias"  # the deep stem's last BN sits outside conv1
    assert resnet_key("bn1.bias") == "stem.bn1.bias"
    assert resnet_key("layer3.0.downsample.1.weight", avg_down=True) == "stages.2.blocks.0.shortcut.conv.weight"
    assert resnet_key("layer3.0.downsample.2.bias", avg_down=True) == "stages.2.blocks.0.shortcut.norm.bias"
    assert resnet_key("layer3.0.downsample.1.weight") == "stages.2.blocks.0.shortcut.norm.weight"  # plain ResNet
    assert resnet_key("layer4.2.se.conv.weight") == "stages.3.blocks.2.token_mixer.se.conv.weight"
    with torch.device("meta"):
        theirs = timm.create_model("ecaresnet26t").state_dict()
    assert set(convert_resnet(theirs)) == set(meta_model("ecaresnet26t").state_dict())


# --- official ECA-Net ----------------------------------------------------------------------------------------------

def test_official_state_dict_loads_strictly() -> None:
    shapes = OFFICIAL["state_dict"]["eca_resnet50"]
    official = {f"module.{k}": torch.zeros(shape) for k, shape in shapes.items()}  # a DDP checkpoint's keys
    model = convert_official(official, "eca_resnet50")
    assert model.official_dropped == []
    assert len(model.state_dict()) == len(shapes)
    assert model.state_dict()["stages.3.blocks.2.token_mixer.se.conv.weight"].shape == (1, 1, 7)


@pytest.mark.skipif(not os.environ.get("ECANET_REF"), reason="ECANET_REF (the official checkout) not set")
@pytest.mark.slow
def test_logits_equal_the_official_code() -> None:
    sys.path.insert(0, os.environ["ECANET_REF"])
    from models.eca_resnet import eca_resnet50

    official = eca_resnet50(k_size=list("3557")).eval()
    perturb_all(official)
    ours = convert_official(official.state_dict(), "eca_resnet50")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - official(x)).abs().max().item() <= 1e-5


# --- the eca gate ---------------------------------------------------------------------------------------------------

def test_eca_by_hand() -> None:
    """4 channels, k = 3 taps (0.5, -1, 2), zero padding: gate_c = sigmoid(0.5 m_{c-1} - m_c + 2 m_{c+1})."""
    eca = EfficientChannelAttention(4, kernel_size=3)
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[0.5, -1.0, 2.0]]]))
    x = torch.tensor([1.0, 2.0, -1.0, 0.5]).view(1, 4, 1, 1).repeat(1, 1, 2, 3)  # channel means 1, 2, -1, 0.5
    x[0, 0, 0, 0] += 6.0  # channel 0 now has mean 2
    means = [2.0, 2.0, -1.0, 0.5]
    logits = [-2.0 + 2 * 2.0, 0.5 * 2.0 - 2.0 + 2 * -1.0, 0.5 * 2.0 + 1.0 + 2 * 0.5, 0.5 * -1.0 - 0.5]
    assert logits == [2.0, -3.0, 3.0, -1.0]
    gate = torch.tensor([1 / (1 + math.exp(-v)) for v in logits]).view(1, 4, 1, 1)
    assert torch.allclose(eca(x), x * gate, atol=1e-6)
    assert [round(x[0, c].mean().item(), 6) for c in range(4)] == means


def test_adaptive_kernel_is_timms() -> None:
    assert [adaptive_kernel(c) for c in (16, 64, 256, 512, 1024, 2048, 8192)] == [3, 3, 5, 5, 5, 7, 7]
    from timm.layers import EcaModule

    for channels in (8, 24, 100, 256, 777, 2048, 4096):
        assert EcaModule(channels).conv.kernel_size[0] == adaptive_kernel(channels)
    assert adaptive_kernel(256, gamma=1.0, beta=1.0) == 9  # |8 + 1| / 1 = 9


def test_eca_as_a_block_slot() -> None:
    """The gate as its own plain step of a block (``slots:``), named by its slot."""
    recipe = {"name": "eca_slot", "img_size": 32, "stem": {"type": "conv", "kernel_size": 4, "stride": 4, "padding": 0},
              "block": {"norm": "batchnorm", "token_mixer": {"type": "dwconv", "kernel_size": 3},
                        "channel_mixer": None, "slots": {"gate": {"type": "eca", "kernel_size": 5}},
                        "branches": [["norm", "token_mixer"], {"path": ["gate"], "kind": "plain"}]},
              "stages": [{"depth": 1, "dim": 32}]}
    model = metablocks.build_model(recipe).eval()
    assert model.state_dict()["stages.0.blocks.0.gate.conv.weight"].shape == (1, 1, 5)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_bottleneck_without_attn_is_unchanged() -> None:
    """attn defaults to None: no ``se`` module, and the dump (so the model_id) has no attn key."""
    recipe = metablocks.load_recipe("resnet50")
    assert "attn" not in recipe.stages[0].token_mixer[0].dump()
    assert not any(".se." in k for k in meta_model("resnet50").state_dict())
    assert metablocks.load_recipe("ecaresnet50d").stages[0].token_mixer[0].dump()["attn"] == {
        "type": "eca", "kernel_size": None, "gamma": 2.0, "beta": 1.0}


def test_eca_errors_are_located() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("ecaresnet50d", {"stages[1].token_mixer.attn.kernel_size": 4})
    assert ("stages[1].token_mixer.attn: channel_mixer 'eca': kernel_size must be odd so the 1-D conv keeps the 512 "
            "channels aligned, got 4 (set at stages[1].token_mixer.attn.kernel_size)") in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("ecaresnet50d", {"block.token_mixer.attn": {"type": "eca", "gamma": 0}})
    assert "stages[0].token_mixer.attn.gamma: Input should be greater than 0 (given: 0)" in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("ecaresnet50d", {"block.token_mixer.attn": "ecaa"})
    assert "stages[0].token_mixer.attn: unknown channel_mixer 'ecaa' (did you mean 'eca'?)" in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("ecaresnet50d", {"block.token_mixer.attn": "layernorm"})
    assert "stages[0].token_mixer.attn: unknown channel_mixer 'layernorm'" in str(err.value)
