"""Official RepLKNet checkpoints in (DingXiaoH/RepLKNet-pytorch replknet.py, the training form): the official
RepLKNet-31B state_dict's keys (tests/data/replknet_official_keys.json) load strictly into replknet_31b; official
blocks 2i (RepLK) and 2i + 1 (ConvFFN) are our block i's token and channel mixers. A deployed checkpoint is refused
by name. Measured outside the repository against the official code (perturbed BNs, some negative weights): max
|logit diff| 0 (bit-identical)."""
import pytest
import torch
from official_keys import manifest, n_params, zero_state

import metablocks
from metablocks.interop.official import OfficialWeightsError, convert_official


@pytest.fixture(scope="module")
def replknet():
    return metablocks.create_model("replknet_31b")


def test_the_official_state_dict_loads_strictly(replknet) -> None:
    official = zero_state("replknet", "replknet_31b")
    assert manifest("replknet")["models"]["replknet_31b"]["params"] == n_params(replknet) == 79_864_168
    official["stages.2.blocks.34.prelkb_bn.weight"] = torch.arange(512.0)
    official["stages.2.blocks.35.preffn_bn.bias"] = torch.arange(512.0)
    official["stages.2.blocks.34.large_kernel.small_conv.conv.weight"] = torch.ones(512, 1, 5, 5)
    official["transitions.2.1.bn.running_mean"] = torch.arange(1024.0)
    ours = convert_official(official, replknet).state_dict()
    assert torch.equal(ours["stages.2.blocks.17.norm1.weight"], torch.arange(512.0))
    assert torch.equal(ours["stages.2.blocks.17.norm2.bias"], torch.arange(512.0))
    assert torch.equal(ours["stages.2.blocks.17.token_mixer.large_kernel.small.conv.weight"], torch.ones(512, 1, 5, 5))
    assert torch.equal(ours["stages.3.downsample.layers.1.norm.running_mean"], torch.arange(1024.0))


def test_a_deployed_checkpoint_is_refused_by_name(replknet) -> None:
    official = zero_state("replknet", "replknet_31b")
    official["stages.0.blocks.0.large_kernel.lkb_reparam.weight"] = torch.zeros(128, 1, 31, 31)
    with pytest.raises(OfficialWeightsError, match=r"deployed \(re-parameterized\) RepLKNet checkpoint .*lkb_reparam"):
        convert_official(official, replknet)


def test_a_checkpoint_with_a_missing_and_an_extra_key_names_both(replknet) -> None:
    official = zero_state("replknet", "replknet_31b")
    del official["stages.1.blocks.3.pw2.bn.bias"]
    official["stages.1.blocks.3.pw3.conv.weight"] = torch.zeros(1)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, replknet)
    assert "stages.1.blocks.1.channel_mixer.pw3.conv.weight" in str(err.value)
    assert "stages.1.blocks.1.channel_mixer.pw2.bn.bias" in str(err.value)
