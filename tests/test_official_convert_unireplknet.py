"""Official UniRepLKNet checkpoints in (AILab-CVC/UniRepLKNet unireplknet.py, the training form): the official
state_dicts' keys (tests/data/unireplknet_official_keys.json: A, which F and P share in structure, N, and T, which S
shares) load strictly into our recipes; the channels-last Linears become 1x1 convs and GRN's (1, 1, 1, C) parameters
(C,). A deployed checkpoint (deploy=True keys) loads into our deployed model. Measured outside the repository against
the official code (perturbed norms, some negative, GRN and layer scales): max |logit diff| 3.6e-7 (A), 4.8e-7 (N),
6.0e-7 (T); an official deployed A into our deployed A: 3.8e-7."""
import pytest
import torch
from official_keys import manifest, n_params, zero_state

import metablocks
from metablocks.interop.official import OfficialWeightsError, convert_official


@pytest.fixture(scope="module")
def unireplknet_a():
    return metablocks.create_model("unireplknet_a")


def test_the_official_state_dict_loads_strictly(unireplknet_a) -> None:
    official = zero_state("unireplknet", "unireplknet_a")
    assert manifest("unireplknet")["models"]["unireplknet_a"]["params"] == n_params(unireplknet_a) == 4_649_060
    official["stages.2.3.pwconv1.1.weight"] = torch.arange(640 * 160.0).reshape(640, 160)
    official["stages.2.3.act.1.gamma"] = torch.arange(640.0).reshape(1, 1, 1, 640)
    official["stages.2.3.gamma"] = torch.full((160,), 0.5)
    official["stages.2.3.dwconv.dil_bn_k7_2.running_var"] = torch.arange(160.0)
    official["stages.0.1.dwconv.weight"] = torch.ones(40, 1, 3, 3)
    ours = convert_official(official, unireplknet_a).state_dict()
    block = "stages.2.blocks.3."
    assert torch.equal(ours[block + "channel_mixer.fc1.weight"], official["stages.2.3.pwconv1.1.weight"][:, :, None, None])
    assert torch.equal(ours[block + "channel_mixer.norm.gamma"], torch.arange(640.0))
    assert torch.equal(ours[block + "layer_scale1.scale"], torch.full((160,), 0.5))
    assert torch.equal(ours[block + "token_mixer.dil_bn_k7_2.running_var"], torch.arange(160.0))
    assert torch.equal(ours["stages.0.blocks.1.token_mixer.conv.weight"], torch.ones(40, 1, 3, 3))  # a bare 3x3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unireplknet_n", "unireplknet_t"])
def test_the_other_structures_load_strictly(name: str) -> None:
    model = convert_official(zero_state("unireplknet", name), name)
    assert n_params(model) == manifest("unireplknet")["models"][name]["params"]


def test_a_deployed_checkpoint_loads_into_our_deployed_model() -> None:
    """The official deploy=True keys (dwconv with bias, no BNs, no gamma, GRN without beta, pwconv2.0 with bias) are
    those of metablocks.deploy(model): the converter folds the model first, then loads strictly."""
    official = zero_state("unireplknet", "unireplknet_a_deployed")
    assert manifest("unireplknet")["models"]["unireplknet_a_deployed"]["params"] == 4_437_300  # the paper's 4.4M
    official["stages.2.0.dwconv.lk_origin.bias"] = torch.arange(160.0)
    official["stages.0.1.dwconv.bias"] = torch.arange(40.0)
    official["stages.2.0.pwconv2.0.bias"] = -torch.arange(160.0)
    model = convert_official(official, "unireplknet_a")
    ours = model.state_dict()
    assert n_params(model) == 4_437_300 and len(ours) == len(official)
    assert torch.equal(ours["stages.2.blocks.0.token_mixer.lk_origin.bias"], torch.arange(160.0))
    assert torch.equal(ours["stages.0.blocks.1.token_mixer.conv.bias"], torch.arange(40.0))
    assert torch.equal(ours["stages.2.blocks.0.channel_mixer.fc2.bias"], -torch.arange(160.0))


def test_a_checkpoint_with_a_missing_and_an_extra_key_names_both(unireplknet_a) -> None:
    official = zero_state("unireplknet", "unireplknet_a")
    del official["stages.1.0.se.up.bias"]
    official["stages.1.0.se.mid.weight"] = torch.zeros(3)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, unireplknet_a)
    assert "stages.1.blocks.0.channel_mixer.se.mid.weight" in str(err.value)
    assert "stages.1.blocks.0.channel_mixer.se.up.bias" in str(err.value)
