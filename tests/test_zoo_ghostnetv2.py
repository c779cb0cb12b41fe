"""GhostNetV2 (Tang et al., NeurIPS 2022) as recipes: every size equal to timm's ghostnetv2_*, weight for weight
(logits within 1e-5 with perturbed weights; measured: bit-equal). The Ghost bottleneck is one token mixer, its
shortcut the ``dw_project`` shortcut kind, and the DFC gate is checked against values computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks import RecipeError
from metablocks.components.shortcuts.dw_project import DwProject
from metablocks.components.token_mixers.ghost_bottleneck import GhostBottleneck
from metablocks.components.token_mixers.ghost_module import DFCGate, GhostModule
from metablocks.interop.timm import load_timm_state_dict
from metablocks.registry import Context, get
from zoo_timm import n_params, perturb

timm = pytest.importorskip("timm")

# measured; equal to timm 1.0.31's parameter count for the same name (and to the official ghostnetv2_torch.py's)
PARAMS = {"ghostnetv2_100": 6_156_908, "ghostnetv2_130": 8_960_404, "ghostnetv2_160": 12_392_698}
FAST = ["ghostnetv2_100"]


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm(name: str) -> None:
    ours = metablocks.create_model(name).eval()
    theirs = timm.create_model(name).eval()
    assert ours.recipe.timm_name == name
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    perturb(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 160, 160)  # 5x5 in the last stages: the DFC gate pools an odd map (2x2) and upsamples it
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max().item() > 0.1  # the perturbed blocks really move the logits
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(PARAMS))
def test_recipe_records_the_paper(name: str) -> None:
    recipe = metablocks.load_recipe(name)
    assert recipe.paper.title == "GhostNetV2: Enhance Cheap Operation with Long-Range Attention"
    assert None not in (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1)
    assert 0 <= PARAMS[name] / 1e6 - recipe.paper.params_m < 0.1  # the paper truncates: 6.157M printed 6.1
    assert [s.depth for s in recipe.stages] == [1, 1, 1, 1, 1, 1, 5, 1, 4, 0]  # the official cfgs' row groups


@pytest.mark.slow
def test_the_paper_counts_convolutions_only() -> None:
    """The paper's FLOPs are the multiply-adds of the convs and the classifier (167.05M, 269.3M, 398.6M); ours also
    count BatchNorm and the nearest upsampling of the DFC gates."""
    from metablocks.analysis import count_macs

    for name in PARAMS:
        report = count_macs(metablocks.create_model(name).eval())
        convs = (report.by_operator["conv"] + report.by_operator["linear"]) / 1e9
        assert round(convs, 3) == metablocks.load_recipe(name).paper.macs_g


def test_blocks_follow_the_table() -> None:
    model = metablocks.create_model("ghostnetv2_100")
    first, third = model.stages[0].blocks[0].token_mixer, model.stages[2].blocks[0].token_mixer
    assert isinstance(first, GhostBottleneck) and first.ghost1.dfc is None  # 'original' in the first two layers
    assert model.stages[1].blocks[0].token_mixer.ghost1.dfc is None and isinstance(third.ghost1.dfc, DFCGate)
    assert all(block.token_mixer.ghost2.dfc is None for stage in model.stages for block in stage.blocks)
    strided = model.stages[3].blocks[0]  # k5, 72 exp, 40 out, SE, stride 2
    assert strided.token_mixer.conv_dw.weight.shape == (72, 1, 5, 5) and strided.token_mixer.conv_dw.stride == (2, 2)
    assert strided.token_mixer.se.down.weight.shape == (20, 72, 1, 1)  # make_divisible(72 x 0.25, 4) = 20 (not 18)
    assert isinstance(strided.shortcut, DwProject) and strided.shortcut.conv_dw.weight.shape == (24, 1, 5, 5)
    widen = model.stages[6].blocks[3]  # 80 -> 112 inside a stage, stride 1: a projection without stride, no dw conv
    assert widen.token_mixer.conv_dw is None and widen.shortcut.conv.weight.shape == (112, 80, 1, 1)
    assert widen.shortcut.conv_dw.stride == (1, 1) and not hasattr(model.stages[6].blocks[4], "shortcut")
    assert model.stages[9].downsample.layers[0].conv.weight.shape == (960, 160, 1, 1) and len(model.stages[9].blocks) == 0
    assert model.head.conv.bias is not None and model.head.drop.p == 0.2


def _identity_bn(module: torch.nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_var.fill_(1 - bn.eps)  # (var + eps) = 1: every BN is the identity


def test_dfc_gate_by_hand() -> None:
    """avgpool 2 -> 1x1 -> dw 1x5 -> dw 5x1 -> sigmoid -> nearest up, on a 4x6 ramp x[r, c] = 6r + c."""
    gate = DFCGate(1, 1, kernel_size=5, norm=get("norm", "batchnorm")()).eval()
    with torch.no_grad():
        _identity_bn(gate)
        gate.conv.weight.fill_(0.1)
        gate.conv_w.weight.copy_(torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 5))  # a[j] + a[j + 1]
        gate.conv_h.weight.copy_(torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]).view(1, 1, 5, 1))  # b[i - 1] + b[i]
        x = torch.arange(24.0).view(1, 1, 4, 6)
        # pooled 12i + 2j + 3.5 = [[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]]; x 0.1; along W; along H:
        by_hand = torch.tensor([[0.9, 1.3, 0.75], [4.2, 5.0, 2.7]]).sigmoid()
        assert torch.allclose(gate(x, (2, 3))[0, 0], by_hand, atol=1e-6)
        up = gate(x, (4, 6))[0, 0]
        assert torch.allclose(up, by_hand.repeat_interleave(2, 0).repeat_interleave(2, 1), atol=1e-6)
        odd = gate(x, (5, 7))[0, 0]  # nearest: row r <- floor(r * 2 / 5), col c <- floor(c * 3 / 7)
        rows, cols = [0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 2, 2]
        assert torch.allclose(odd, by_hand[rows][:, cols], atol=1e-6)


def test_ghost_module_concatenates_and_trims() -> None:
    """5 out: ceil(5 / 2) = 3 from the 1x1 conv, 3 ghosts from its dw 3x3, the last one cut; DFC multiplies."""
    bn, relu = get("norm", "batchnorm")(), get("act", "relu")()
    module = GhostModule(4, out_dim=5, act=relu, norm=bn, dfc=True).eval()
    assert module.primary.conv.weight.shape == (3, 4, 1, 1) and module.cheap.conv.weight.shape == (3, 1, 3, 3)
    with torch.no_grad():
        _identity_bn(module)
        x = torch.randn(2, 4, 8, 8)
        intrinsic = F.relu(F.conv2d(x, module.primary.conv.weight))
        ghosts = F.relu(F.conv2d(intrinsic, module.cheap.conv.weight, padding=1, groups=3))
        expected = torch.cat([intrinsic, ghosts], 1)[:, :5] * module.dfc(x, (8, 8))
        assert torch.allclose(module(x), expected, atol=1e-5)


def test_bottleneck_block_is_shortcut_plus_branch() -> None:
    model = metablocks.create_model("ghostnetv2_100").eval()
    perturb(model)
    block = model.stages[3].blocks[0]  # 24 -> 40, stride 2: ceil(H / 2)
    x = torch.randn(1, 24, 7, 7)
    with torch.no_grad():
        expected = block.shortcut(x) + block.token_mixer(x)
        assert expected.shape == (1, 40, 4, 4) and torch.allclose(block(x.clone()), expected, atol=1e-6)


def test_bad_settings_are_located_errors() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.build_model("ghostnetv2_100", overrides=["img_size=32"])  # stage 8 runs at 1x1
    text = str(err.value)
    assert ("stages[8].token_mixer[0]: token_mixer 'ghost_bottleneck': the DFC gate average-pools its 1x1 input by 2: "
            "it needs a map of at least 2x2 (give a larger img_size, or dfc: false)") in text
    with pytest.raises(RecipeError) as err:
        metablocks.build_model("ghostnetv2_100", overrides=["stages[3].token_mixer.kernel_size=4",
                                                            "stages[3].shortcut.kernel_size=6"])
    text = str(err.value)
    assert "stages[3].token_mixer: token_mixer 'ghost_bottleneck': kernel_size=4 must be odd to keep the map centred" in text
    assert "stages[3].shortcut: shortcut 'dw_project': kernel_size=6 must be odd to keep the map centred" in text
    assert all(p.file and p.file.endswith("ghostnetv2_100.yaml") for p in err.value.problems)
    with pytest.raises(RecipeError, match=r"ghost_module': dw_size=2 must be odd to keep the map size"):
        metablocks.build_model("ghostnetv2_100", overrides={"stages[0].token_mixer": {"type": "ghost_module", "dw_size": 2}})


def test_squeeze_excite_hard_gate_is_optional_and_keeps_old_ids() -> None:
    se = get("channel_mixer", "squeeze_excite")
    assert "gate" not in se().dump() and se(gate="hard_sigmoid").dump()["gate"] == "hard_sigmoid"
    module = se(gate="hard_sigmoid").build(Context(8))
    x = torch.randn(1, 8, 3, 3)
    with torch.no_grad():
        logits = module.up(F.relu(module.down(x.mean((2, 3), keepdim=True))))
        assert torch.allclose(module(x), x * F.relu6(logits + 3) / 6, atol=1e-6)
    assert math.isclose(F.hardsigmoid(torch.tensor(0.0)).item(), 0.5)


def test_official_checkpoints_convert_with_the_timm_renames() -> None:
    """The official ghostnetv2_torch.py has timm's module names (measured: same keys and shapes, logits bit-equal to
    ours through this converter), so ``metablocks convert ck_ghostnetv2_10.pth.tar --recipe ghostnetv2_100`` works."""
    from metablocks.interop.official import convert_official

    theirs = timm.create_model("ghostnetv2_100").eval()
    perturb(theirs)
    model = convert_official(theirs.state_dict(), "ghostnetv2_100")
    assert model.official_dropped == []
    assert torch.equal(model.stages[2].blocks[0].token_mixer.ghost1.dfc.conv_w.weight,
                       theirs.state_dict()["blocks.2.0.ghost1.short_conv.2.weight"])
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - theirs(x)).abs().max().item() <= 1e-5
