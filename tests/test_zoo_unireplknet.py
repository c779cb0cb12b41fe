"""UniRepLKNet A/F/P/N/T/S as recipes: the official code's structure and parameter count, the paper's table once
re-parameterized, the Dilated Reparam Block and the deploy switch computing the same function."""
import pytest
import torch
from torch import nn

import metablocks
from helpers import randomize_bn as randomize_all_bn
from metablocks.components.channel_mixers.grn_mlp import GrnMlp
from metablocks.components.norms.grn import GRN
from metablocks.components.common.reparam import dilate_kernel
from metablocks.deploy import deploy as reparameterize_model
from metablocks.components.token_mixers.dilated_reparam import PAPER_BRANCHES, DilatedReparam
from metablocks.recipe.errors import RecipeError
from metablocks.registry import get

fvcore = pytest.importorskip("fvcore.nn")

# size: (depths, dims, stage-3 kernels cycled, parameters of the official code's training-time model)
SIZES = {
    "a": ((2, 2, 6, 2), (40, 80, 160, 320), (13,), 4_649_060),
    "f": ((2, 2, 6, 2), (48, 96, 192, 384), (13,), 6_489_328),
    "p": ((2, 2, 6, 2), (64, 128, 256, 512), (13,), 11_080_520),
    "n": ((2, 2, 8, 2), (80, 160, 320, 640), (13,), 18_818_880),
    "t": ((3, 3, 18, 3), (80, 160, 320, 640), (13, 3), 31_693_420),
    "s": ((3, 3, 27, 3), (96, 192, 384, 768), (13, 3, 3), 56_456_704),
}
# the paper's table rounds the deployed model's size: to 0.1M up to N, to 1M for T and S
ROUNDING = {"a": 0.1, "f": 0.1, "p": 0.1, "n": 0.1, "t": 1.0, "s": 1.0}
FAST = ["a"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def official_params(depths: tuple, dims: tuple, stage3: tuple) -> int:
    """The parameter count of the official UniRepLKNet, written out layer by layer from its code."""
    c0 = dims[0]
    total = 27 * (c0 // 2) + c0 // 2 + 2 * (c0 // 2) + (c0 // 2) * 9 * c0 + c0 + 2 * c0  # stem: conv-LN-GELU-conv-LN
    total += sum(9 * a * b + b + 2 * b for a, b in zip(dims, dims[1:]))  # 3x3 stride-2 conv + LN between stages
    for stage, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            kernel = 3 if stage == 0 else (stage3[j % len(stage3)] if stage == 2 else 13)
            if kernel == 3:
                total += 9 * c  # plain 3x3 depthwise, no bias
            else:  # 13x13 + BN, branches 5x5 d1, 7x7 d2, 3x3 d3/d4/d5 each + BN
                total += 169 * c + 2 * c + (25 + 49 + 9 + 9 + 9) * c + 5 * 2 * c
            total += 2 * c  # BN
            total += c * (c // 4) + c // 4 + (c // 4) * c + c  # SE
            total += c * 4 * c + 4 * c + 2 * 4 * c + 4 * c * c + 2 * c + c  # fc1, GRN, fc2 (no bias), BN, layer scale
    return total + 2 * dims[-1] + dims[-1] * 1000 + 1000  # head: LN, linear


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, GRN and layer scales away from their zero init."""
    randomize_all_bn(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GRN):
                m.gamma.normal_(0, 0.5)
                m.beta.normal_(0, 0.5)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale1.scale"):
                p.uniform_(0.5, 1.0)
    return model.eval()


@pytest.mark.parametrize("size", [*"afpnt", pytest.param("s", marks=pytest.mark.slow)])
def test_parameter_count_equals_the_official_code(size: str) -> None:
    depths, dims, stage3, official = SIZES[size]
    model = metablocks.create_model(f"unireplknet_{size}")
    assert n_params(model) == official_params(depths, dims, stage3) == official
    assert [s.depth for s in model.recipe.stages] == list(depths)
    assert [s.dim for s in model.recipe.stages] == list(dims)


def test_recipes_record_the_paper() -> None:
    expected = {"a": (4.4, 0.6, 77.0), "f": (6.2, 0.9, 78.6), "p": (10.7, 1.6, 80.2), "n": (18.3, 2.8, 81.6),
                "t": (31, 4.9, 83.2), "s": (56, 9.1, 83.9)}
    for size, numbers in expected.items():
        recipe = metablocks.load_recipe(f"unireplknet_{size}")
        assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.top1) == numbers
        assert recipe.paper.title.startswith("UniRepLKNet")
        assert recipe.timm_name is None  # timm 1.0 has no UniRepLKNet


def test_kernel_lists_cycle_per_block() -> None:
    """T alternates 13, 3 in stage 3; S cycles 13, 3, 3; stage 1 is all 3x3, stages 2 and 4 all 13x13."""
    def kernels(name: str, stage: int) -> list[tuple[str, int]]:
        config = metablocks.load_recipe(name).stages[stage]
        return [(m.type, m.kernel_size) for m in (config.block(j).token_mixer for j in range(config.depth))]

    large, small = ("dilated_reparam", 13), ("dwconv", 3)
    assert kernels("unireplknet_t", 2) == [large, small] * 9
    assert kernels("unireplknet_t", 0) == [small] * 3 and kernels("unireplknet_t", 3) == [large] * 3
    assert kernels("unireplknet_s", 2) == [large, small, small] * 9 and kernels("unireplknet_s", 1) == [large] * 3
    model = metablocks.create_model("unireplknet_a")  # the built blocks follow the recipe
    assert [type(b.token_mixer).__name__ for b in model.stages[0].blocks] == ["DWConv", "DWConv"]
    assert all(isinstance(b.token_mixer, DilatedReparam) for stage in model.stages[1:] for b in stage.blocks)


def test_dilate_kernel_by_hand() -> None:
    kernel = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    dense = dilate_kernel(kernel, 2)
    assert dense.shape == (1, 1, 5, 5)
    assert dense[0, 0].tolist() == [[1, 0, 2, 0, 3], [0] * 5, [4, 0, 5, 0, 6], [0] * 5, [7, 0, 8, 0, 9]]


@pytest.mark.parametrize("kernel_size", sorted(PAPER_BRANCHES))
def test_dilated_reparam_fuses_into_one_conv(kernel_size: int) -> None:
    block = randomize_bn(DilatedReparam(8, kernel_size=kernel_size))
    x = torch.randn(2, 8, 19, 17)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    assert (before - after).abs().max().item() <= 1e-4
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (kernel_size, kernel_size) and convs[0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert n_params(block) == 8 * kernel_size ** 2 + 8


def test_dilated_reparam_branches_are_the_papers() -> None:
    block = DilatedReparam(4, kernel_size=13)
    dilated = {name: (m.kernel_size[0], m.dilation[0]) for name, m in block.named_children() if name.startswith("dil_conv")}
    assert dilated == {"dil_conv_k5_1": (5, 1), "dil_conv_k7_2": (7, 2), "dil_conv_k3_3": (3, 3),
                       "dil_conv_k3_4": (3, 4), "dil_conv_k3_5": (3, 5)}


def test_dilated_reparam_constraints_are_reported() -> None:
    config = get("token_mixer", "dilated_reparam")
    from metablocks.registry import Context

    assert "the paper gives dilated branches only for kernel_size in" in config(kernel_size=19).check(Context(8))[0]
    assert config(kernel_size=19, branches=[(5, 1), (3, 9)]).check(Context(8)) == []
    wide = config(kernel_size=7, branches=[(5, 2)]).check(Context(8))
    assert wide == ["branch [5, 2] spans 9x9, more than kernel_size=7; it could not be merged into the large kernel"]
    with pytest.raises(RecipeError, match="kernel_size must be odd"):
        metablocks.load_recipe("unireplknet_a", {"stages[1].token_mixer.kernel_size": 12})


def test_grn_by_hand_in_both_layouts() -> None:
    x = torch.tensor([[[[3.0, 0.0], [4.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]])  # (1, C=2, 2, 2): energies 5 and 1
    grn = GRN(2, channels_last=False)
    with torch.no_grad():
        grn.gamma.copy_(torch.tensor([1.0, 2.0]))
        grn.beta.copy_(torch.tensor([0.5, -0.5]))
    # response = energy / mean energy = 5/3, 1/3; out = x + gamma * x * response + beta
    expected = torch.stack([x[0, 0] * (1 + 5 / 3) + 0.5, x[0, 1] * (1 + 2 / 3) - 0.5])[None]
    assert torch.allclose(grn(x), expected, atol=1e-5)
    last = GRN(2, channels_last=True)
    last.load_state_dict(grn.state_dict())
    assert torch.allclose(last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), expected, atol=1e-5)


def test_grn_mlp_reparameterize_folds_grn_bias_and_bn() -> None:
    config = get("channel_mixer", "grn_mlp")(out_bias=False, out_norm="batchnorm", se_ratio=0.25)
    from metablocks.registry import Context

    mixer = randomize_bn(config.build(Context(16)))
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        before = mixer(x)
        mixer.reparameterize()
        after = mixer(x)
    assert (before - after).abs().max().item() <= 1e-4
    assert isinstance(mixer, GrnMlp) and isinstance(mixer.out_norm, nn.Identity) and mixer.norm.beta is None
    assert mixer.fc2.bias is not None


def deploy_difference(name: str, size: int = 224) -> tuple[float, nn.Module]:
    model = randomize_bn(metablocks.create_model(name))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = model(x)
        reparameterize_model(model)
        after = model(x)
    return (before - after).abs().max().item(), model


@pytest.mark.parametrize("size", FAST + [pytest.param(s, marks=pytest.mark.slow) for s in SIZES if s not in FAST])
def test_deploy_model_equals_training_model(size: str) -> None:
    diff, model = deploy_difference(f"unireplknet_{size}")
    assert diff <= 1e-4
    for block in (b for stage in model.stages for b in stage.blocks):
        if isinstance(block.token_mixer, DilatedReparam):  # 13x13 blocks: one conv, no BN, no layer scale left
            assert not isinstance(getattr(block, "norm1", None), nn.BatchNorm2d)  # folded away
            assert type(getattr(block, "layer_scale1", nn.Identity())).__name__ != "LayerScale"
            assert [n for n, _ in block.token_mixer.named_children()] == ["lk_origin"]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in block.channel_mixer.modules())
    again = reparameterize_model(model)  # a second call changes nothing
    assert again is model


def macs(model: nn.Module, size: int = 224) -> float:
    counter = fvcore.FlopCountAnalysis(model.eval(), torch.randn(1, 3, size, size))
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    return counter.total() / 1e9


@pytest.mark.parametrize("size", ["a", "f"] + [pytest.param(s, marks=pytest.mark.slow) for s in "pnts"])
def test_deployed_model_matches_the_papers_table(size: str) -> None:
    """The paper reports the re-parameterized model: its params and MACs at 224 round to the table's."""
    model = reparameterize_model(metablocks.create_model(f"unireplknet_{size}").eval())
    paper = model.recipe.paper
    step = ROUNDING[size]
    assert abs(n_params(model) / 1e6 - paper.params_m) <= step / 2
    assert abs(macs(model) - paper.macs_g) <= 0.05


@pytest.mark.parametrize("resolution", [224, 160])
def test_forward_backward(resolution: int) -> None:
    model = metablocks.create_model("unireplknet_a", num_classes=10, drop_path_rate=0.1)
    x = torch.randn(1, 3, resolution, resolution)
    out = model(x)
    assert out.shape == (1, 10)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    final, features = model.forward_intermediates(torch.randn(1, 3, resolution, resolution))
    assert final.shape[-1] == resolution // 32
    assert [f.shape[-1] for f in features] == [resolution // 4, resolution // 8, resolution // 16, resolution // 32]
