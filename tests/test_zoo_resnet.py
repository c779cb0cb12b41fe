"""ResNet-50/101 as recipes: equal to timm (params, strict weight loading, logits), timm's output-stride-8 dilation
placement, the bottleneck/residual-downsample/stem components and their errors."""
import pytest
import torch

import metablocks
from metablocks.components.stems.resnet import maxpool_out
from metablocks.interop.families.resnet import resnet_key
from metablocks.interop.timm import load_timm_state_dict
from metablocks.recipe.errors import RecipeError

timm = pytest.importorskip("timm")

PARAMS = {"resnet50": 25_557_032, "resnet101": 44_549_160}  # timm's counts, which ours must equal
# timm's output_stride=8: stage 3 and 4 unstrided; each stage's first 3x3 keeps the previous dilation (1, then 2)
BOTTLENECK = {"type": "bottleneck", "ratio": 0.25}
OS8 = {"stages[2].stride": 1,
       "stages[2].token_mixer": [{**BOTTLENECK, "dilation": d} for d in [1, 2, 2, 2, 2, 2]],
       "stages[3].stride": 1,
       "stages[3].token_mixer": [{**BOTTLENECK, "dilation": d} for d in [2, 4, 4]]}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """timm zero-inits each block's last BN scale (every branch would add 0): give every BN real values first."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def equal_logits(ours: torch.nn.Module, theirs: torch.nn.Module, size: int) -> float:
    randomize_batchnorm(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours.eval()(x) - theirs.eval()(x)).abs().max().item()


@pytest.mark.parametrize("name", ["resnet50", pytest.param("resnet101", marks=pytest.mark.slow)])
def test_equal_to_timm(name: str) -> None:
    ours, theirs = metablocks.create_model(name), timm.create_model(name)
    assert ours.recipe.timm_name == name
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    assert equal_logits(ours, theirs, 224) <= 1e-4


def test_param_counts_and_layout() -> None:
    model = metablocks.create_model("resnet101")
    assert n_params(model) == PARAMS["resnet101"]
    # the paper's [3, 4, 23, 3] blocks, the first of each stage its transition (projection shortcut, stride 2 from stage 1)
    assert [stage.depth for stage in model.recipe.stages] == [len(stage.blocks) for stage in model.stages] == [3, 4, 23, 3]
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    assert model.stem.conv1.out_channels == 64 and model.stages[0].blocks[0].token_mixer.conv1.in_channels == 64
    firsts = [stage.blocks[0] for stage in model.stages]
    assert [(b.shortcut.conv.in_channels, b.shortcut.conv.stride[0]) for b in firsts] == [(64, 1), (256, 2), (512, 2), (1024, 2)]
    assert not any(hasattr(b, "shortcut") for stage in model.stages for b in stage.blocks[1:])
    assert all(isinstance(stage.downsample, torch.nn.Identity) for stage in model.stages)


def test_output_stride_8_equals_timm() -> None:
    ours = metablocks.build_model("resnet50", overrides=OS8)
    theirs = timm.create_model("resnet50", output_stride=8)
    dilations = [(s.blocks[0].token_mixer.conv2.dilation[0], s.blocks[1].token_mixer.conv2.dilation[0]) for s in ours.stages]
    assert dilations == [(1, 1), (1, 1), (1, 2), (2, 4)]  # timm: the first block of a stage keeps the previous dilation
    assert [info["reduction"] for info in ours.feature_info] == [4, 8, 8, 8]
    assert equal_logits(ours, theirs, 64) <= 1e-4
    with torch.no_grad():
        assert ours.forward_features(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 8, 8)


@pytest.mark.parametrize("size", [224, 160])
def test_forward_backward(size: int) -> None:
    model = metablocks.create_model("resnet50", img_size=size)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert model.stem.conv1.weight.grad is not None and model.head.fc.weight.grad.abs().sum() > 0


def test_blocks_start_as_identity_plus_relu() -> None:
    """zero_init_last (timm's default): every bottleneck's last BN scale is 0, so a block is relu(x) at init."""
    model = metablocks.create_model("resnet50").eval()
    block = model.stages[1].blocks[1]
    assert torch.all(block.token_mixer.bn3.weight == 0)
    x = torch.randn(1, 512, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize("size", [1, 2, 7, 8, 112, 129, 256, 385])
def test_maxpool_output_size_matches_torch(size: int) -> None:
    for ceil_mode in (False, True):
        pool = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
        assert maxpool_out(size, ceil_mode) == pool(torch.zeros(1, 1, size, size)).shape[-1]


def test_timm_key_mapping() -> None:
    assert resnet_key("conv1.weight") == "stem.conv1.weight"
    assert resnet_key("bn1.running_var") == "stem.bn1.running_var"
    assert resnet_key("layer1.0.conv2.weight") == "stages.0.blocks.0.token_mixer.conv2.weight"
    assert resnet_key("layer2.0.downsample.0.weight") == "stages.1.blocks.0.shortcut.conv.weight"
    assert resnet_key("layer2.0.downsample.1.bias") == "stages.1.blocks.0.shortcut.norm.bias"
    assert resnet_key("layer4.2.bn3.weight") == "stages.3.blocks.2.token_mixer.bn3.weight"
    assert resnet_key("fc.bias") == "head.fc.bias"


def test_residual_downsample_needs_a_strided_branch() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("resnet50", {"stages[1].stride": 1, "stages[1].downsample": {"type": "residual",
                                                                                             "token_mixer": "pooling"}})
    assert "token_mixer 'pooling' cannot be the branch of a residual downsample" in str(err.value)


def test_a_transition_needs_a_component_that_can_change_the_map() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("resnet50", {"stages[1].token_mixer": "pooling"})
    assert ("resnet50.yaml:8: stages[1].dim: stage 1 changes the width from 256 to 512 but has no downsample, and its "
            "first block cannot change it (none of pooling takes in_dim/out_dim)") in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("resnet50", {"stages[1].token_mixer": "pooling", "stages[1].dim": 256})
    assert ("stages[1].shape: branch 1 must change the map with stride 2, but none of its components (pooling) can: "
            "use one that takes in_dim/out_dim and stride") in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("resnet50", {"stages[2].shortcut": None})
    assert ("stages[2].shortcut: branch 1 changes the map (width 512 -> 1024, stride 2) but the block has no shortcut "
            "to match it: add shortcut: projection") in str(err.value)


def test_the_old_form_still_builds_the_same_model() -> None:
    """A recipe of the earlier form (residual downsample + depth - 1 blocks) builds the same network: same parameters,
    same outputs once the weights are renamed."""
    old = {"name": "r", "stem": {"type": "resnet", "channels": [64], "kernel_size": 7}, "downsample": {"type": "residual", "stride": 2},
           "block": {"norm": None, "token_mixer": BOTTLENECK, "channel_mixer": None, "post_act": "relu"},
           "stage_defaults": [{"downsample": {"type": "residual", "stride": 1}}, {}],
           "stages": [{"depth": 1, "dim": 256}, {"depth": 1, "dim": 512}], "img_size": 64}
    new = {**old, "downsample": None, "stage_defaults": [{"stride": 1}, {"stride": 2}],
           "block": {**old["block"], "shortcut": "projection"}, "stages": [{"depth": 2, "dim": 256}, {"depth": 2, "dim": 512}]}
    new.pop("downsample")
    a, b = metablocks.build_model(old).eval(), metablocks.build_model(new).eval()
    assert n_params(a) == n_params(b)
    renamed = {k.replace("downsample.", "blocks.0.").replace("blocks.0.blocks.", "") if ".downsample." in k else
               k.replace(f"blocks.{k.split('.')[3]}.", f"blocks.{int(k.split('.')[3]) + 1}.") if ".blocks." in k else k: v
               for k, v in a.state_dict().items()}
    b.load_state_dict(renamed)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_bottleneck_groups_must_divide_the_width() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("resnet50", {"stages[0].token_mixer.groups": 5})
    assert "groups=5 does not divide the bottleneck width 64" in str(err.value)


def test_stem_sets_its_own_width() -> None:
    """The ResNet stem gives 64 channels into a 256-wide first stage: the first block's transition takes them."""
    model = metablocks.create_model("resnet50")
    assert model.stages[0].blocks[0].in_dim == 64 and model.stages[0].blocks[0].shortcut.conv.out_channels == 256
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("resnet50", {"stages[0].token_mixer": "identity"})
    assert "stage 0 changes the width from 64 to 256 but has no downsample, and its first block cannot change it" in str(err.value)
