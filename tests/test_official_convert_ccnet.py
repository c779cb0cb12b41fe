"""Official CCNet checkpoints in (speedinghzl/CCNet networks/ccnet.py, Seg_Model for Cityscapes): the official
state_dict's keys (tests/data/ccnet_official_keys.json) load strictly into ccnet_resnet101 once the training-only
``dsn`` head is dropped; every InPlaceABN weight w becomes the BatchNorm weight |w| + 1e-5 (InPlaceABN scales by
that); copied verbatim with some negative weights the logits differ by 0.54. Measured outside the repository against
the official code (a pure-PyTorch InPlaceABN as src/inplace_abn_cpu.cpp, perturbed norms, a third of the weights
negative, 129x129 input): max |logit diff| 0 (bit-identical)."""
import pytest
import torch
from official_keys import manifest, n_params, zero_state
from torch import nn

import metablocks
from metablocks.interop.official import OfficialWeightsError, convert_official
from metablocks.interop.official.ccnet import ABN_EPS, abn_weight

DSN_PARAMS = 4_729_875  # the auxiliary head on layer 3: conv 3x3 1024->512 (bias), ABN, conv 1x1 512->19


@pytest.fixture(scope="module")
def ccnet():
    return metablocks.create_model("ccnet_resnet101")


def test_abn_weight_is_the_batchnorm_that_computes_inplace_abn() -> None:
    weight = torch.tensor([2.0, -0.5, 0.0, -3.0])
    assert ABN_EPS == 1e-5
    assert torch.equal(abn_weight(weight), torch.tensor([2.0, 0.5, 0.0, 3.0]) + 1e-5)
    x = torch.randn(2, 4, 3, 3)
    mean, var, bias = torch.randn(4), torch.rand(4) + 0.5, torch.randn(4)
    inplace_abn = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5) * (weight.abs() + 1e-5)[:, None, None]
    inplace_abn = inplace_abn + bias[:, None, None]  # src/inplace_abn_cpu.cpp forward_cpu, activation identity
    bn = nn.BatchNorm2d(4).eval()
    bn.load_state_dict({"weight": abn_weight(weight), "bias": bias, "running_mean": mean, "running_var": var,
                        "num_batches_tracked": torch.tensor(0)})
    assert torch.allclose(bn(x), inplace_abn, atol=1e-6)


def test_the_official_state_dict_loads_strictly(ccnet) -> None:
    official = zero_state("ccnet", "ccnet_resnet101")
    params = manifest("ccnet")["models"]["ccnet_resnet101"]["params"]
    assert params - DSN_PARAMS == n_params(ccnet) == 66_558_036
    official["layer3.22.bn2.weight"] = -torch.arange(256.0)
    official["layer3.22.bn2.bias"] = -torch.arange(256.0)
    official["layer4.0.downsample.1.weight"] = torch.full((2048,), -2.0)
    official["head.conva.1.weight"] = torch.full((512,), -1.0)
    official["head.cca.gamma"] = torch.tensor([-0.25])  # not a norm: as it is
    official["head.bottleneck.3.bias"] = torch.arange(19.0)
    model = convert_official(official, ccnet)
    ours = model.state_dict()
    assert torch.equal(ours["stages.2.blocks.22.token_mixer.bn2.weight"], torch.arange(256.0) + 1e-5)
    assert torch.equal(ours["stages.2.blocks.22.token_mixer.bn2.bias"], -torch.arange(256.0))
    assert torch.equal(ours["stages.3.blocks.0.shortcut.norm.weight"], torch.full((2048,), 2.0 + 1e-5))
    assert torch.equal(ours["head.conva.1.weight"], torch.full((512,), 1.0 + 1e-5))
    assert torch.equal(ours["stem.bn1.weight"], torch.full((64,), 1e-5))  # |0| + eps
    assert torch.equal(ours["head.cca.gamma"], torch.tensor([-0.25]))
    assert torch.equal(ours["head.fc.bias"], torch.arange(19.0))
    assert model.official_dropped and all(key.startswith("dsn.") for key in model.official_dropped)
    assert sum(official[k].numel() for k in model.official_dropped if "running" not in k and "num_batches" not in k) \
        == DSN_PARAMS


def test_a_checkpoint_with_a_missing_and_an_extra_key_names_both(ccnet) -> None:
    official = zero_state("ccnet", "ccnet_resnet101")
    del official["layer2.3.bn3.running_var"]
    official["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, ccnet)
    assert "stages.4.blocks.0.token_mixer.conv1.weight" in str(err.value)
    assert "stages.1.blocks.3.token_mixer.bn3.running_var" in str(err.value)
