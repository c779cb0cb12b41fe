"""Deploy mode: metablocks.deploy / MetaModel.reparameterize fold BatchNorms, parallel branches and layer scales,
with outputs equal to the trained model in eval mode, for every shipped recipe."""
import copy

import pytest
import torch
from torch import nn

import metablocks
from metablocks.analysis.bench import _randomize_norm_stats
from metablocks.blocks import Block, LayerScale
from metablocks.deploy import deploy, fold_affine, fold_affine_into_input, fold_conv_bn

from helpers import small_model  # noqa: E402


def trained_looking(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and layer scales, so a missed fold shows in the outputs."""
    _randomize_norm_stats(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LayerScale):
                m.scale.copy_(torch.rand(m.scale.shape, generator=gen) + 0.5)
    return model


def deploy_diff(name: str) -> tuple[float, nn.Module]:
    model, size = small_model(name)
    trained_looking(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    fused = deploy(copy.deepcopy(model))
    with torch.no_grad():
        return (model(x) - fused(x)).abs().max().item(), fused


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_convnext_layer_scales_fold_into_fc2() -> None:
    diff, fused = deploy_diff("convnext_atto")
    assert diff <= 1e-4
    assert fused.deploy_counts == {"reparameterized": 12, "bn_folded": 0, "layer_scale_folded": 12}  # 2+2+6+2 blocks
    assert count(fused, LayerScale) == 0
    assert not any("layer_scale" in k for k in fused.state_dict())


def test_unireplknet_branches_bns_and_layer_scales_fold() -> None:
    model, _ = small_model("unireplknet_a")
    before = count(model, nn.BatchNorm2d)
    diff, fused = deploy_diff("unireplknet_a")
    assert diff <= 1e-4
    assert before > 0 and count(fused, nn.BatchNorm2d) == 0  # dilated branches, block norms, FFN out norms: all gone
    assert count(fused, LayerScale) == 0


def test_inceptionnext_batchnorm_folds_forward_into_fc1() -> None:
    """The BN after the (concatenating) inception mixer has no output layer to go into: it folds into the MLP's fc1."""
    diff, fused = deploy_diff("inception_next_atto")
    assert diff <= 1e-4
    assert all(not isinstance(m, nn.BatchNorm2d) for b in fused.modules() if isinstance(b, Block) for m in b.modules())
    assert fused.deploy_counts["layer_scale_folded"] == 12


def test_poolformer_folds_only_where_a_layer_ends_the_branch() -> None:
    """avgpool(x) - x has no weights: its layer scale stays; the MLP branch's folds into fc2."""
    diff, fused = deploy_diff("poolformer_s12")
    assert diff <= 1e-4
    assert fused.deploy_counts["layer_scale_folded"] == 12
    assert count(fused, LayerScale) == 12
    assert all(not hasattr(b, "layer_scale2") and hasattr(b, "layer_scale1") for b in fused.modules() if isinstance(b, Block))


@pytest.mark.parametrize("name", ["caformer_s18", "swin_t"])
def test_nothing_to_fold_leaves_outputs_bit_equal(name: str) -> None:
    diff, fused = deploy_diff(name)
    assert diff == 0.0


def test_model_reparameterize_is_deploy_in_place_and_idempotent() -> None:
    model, size = small_model("convnext_atto")
    trained_looking(model)
    reference = copy.deepcopy(model)
    x = torch.randn(1, 3, size, size)
    assert model.reparameterize() is model
    once = {k: v.clone() for k, v in model.state_dict().items()}
    model.reparameterize()
    assert all(torch.equal(once[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert (reference(x) - model(x)).abs().max().item() <= 1e-4


def test_deploy_check_with_example() -> None:
    model, size = small_model("convnext_atto")
    deploy(trained_looking(model), example=torch.randn(1, 3, size, size))  # passes its own equality check


def test_channels_last_deploy_keeps_outputs() -> None:
    model, size = small_model("poolformer_s12")
    trained_looking(model)
    x = torch.randn(2, 3, size, size)
    fused = deploy(copy.deepcopy(model), channels_last=True)
    assert fused.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (model(x) - fused(x.contiguous(memory_format=torch.channels_last))).abs().max().item() <= 1e-4


def test_fold_affine_through_attention_rearrange() -> None:
    """Attention ends in proj then rearrange "b (h w) c -> b h w c": a channel scale folds into proj."""
    from metablocks.components.token_mixers.attention import Attention

    attn = Attention(64, num_heads=2, head_dim=32, proj_bias=True).eval()
    x = torch.randn(2, 4, 4, 64)
    scale, shift = torch.rand(64) + 0.5, torch.randn(64)
    with torch.no_grad():
        expected = attn(x) * scale + shift
        assert fold_affine(attn, scale, shift, channel_axis=3)
        assert torch.allclose(attn(x), expected, atol=1e-5)


def test_fold_affine_refuses_what_it_cannot_fold() -> None:
    from metablocks.components.token_mixers.pooling import Pooling

    pool = Pooling(8)
    assert not fold_affine(pool, torch.ones(8), None, channel_axis=1)
    conv = nn.Conv2d(8, 8, 1)  # a conv's output channels are axis 1, not the last axis
    assert not fold_affine(conv, torch.ones(8), None, channel_axis=3)

    class Twice(nn.Module):  # the output layer runs twice: scaling it would change the first call too
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    assert not fold_affine(Twice(), torch.ones(8), None, channel_axis=3)


def test_fold_into_input_only_without_padding() -> None:
    padded, unpadded = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3)
    scale, shift = torch.rand(4) + 0.5, torch.randn(4)
    x = torch.randn(1, 4, 7, 7)
    assert not fold_affine_into_input(padded, scale, shift)  # the shift would leak into the zero border
    with torch.no_grad():
        expected = unpadded(x * scale[:, None, None] + shift[:, None, None])
        assert fold_affine_into_input(unpadded, scale, shift)
        assert torch.allclose(unpadded(x), expected, atol=1e-5)


def test_conv_bn_fold_outside_blocks() -> None:
    class ConvBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    m = trained_looking(ConvBN()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = m(x)
        assert fold_conv_bn(m) == 1
        assert isinstance(m.bn, nn.Identity)
        assert torch.allclose(m(x), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", metablocks.list_recipes())
def test_every_recipe_deploys_with_equal_outputs(name: str) -> None:
    diff, fused = deploy_diff(name)
    assert diff <= 1e-4, f"{name}: {diff:.2e} ({fused.deploy_counts})"
