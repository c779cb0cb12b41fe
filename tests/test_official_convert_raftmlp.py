"""Official RaftMLP checkpoints in (okojoalg/raft-mlp libs/models.py with the ImageNet cross-MLP-embedding configs):
the official state_dicts' keys (tests/data/raftmlp_official_keys.json, S/M/L) load strictly into our recipes; one
official block is our blocks 2j (vertical) and 2j + 1 (horizontal + channel MLP). The raft LayerNorms run on the
channels in (channel-in-raft, raft index) order there, so their parameters are permuted; copied verbatim, the logits
differ by 0.55 (S, perturbed weights). Measured outside the repository against the official code (perturbed
norms, some negative): max |logit diff| 3.6e-7 (S), 4.2e-7 (M), 3.7e-7 (L)."""
import pytest
import torch
from official_keys import manifest, n_params, zero_state

import metablocks
from metablocks.interop.official import OfficialWeightsError, convert_official
from metablocks.interop.official.raftmlp import raft_norm_to_ours


@pytest.fixture(scope="module")
def raftmlp_s():
    return metablocks.create_model("raftmlp_s")


def test_the_raft_norm_permutation_by_hand() -> None:
    """C = 6, r = 2: official index i = co * r + k holds channel k * (C / r) + co."""
    official = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])  # (co, k) = (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    assert raft_norm_to_ours(official, 2).tolist() == [10.0, 12.0, 14.0, 11.0, 13.0, 15.0]
    for i in range(6):
        assert raft_norm_to_ours(official, 2)[(i % 2) * 3 + i // 2] == official[i]
    assert raft_norm_to_ours(official, 1).tolist() == official.tolist()
    with pytest.raises(ValueError, match="6 channels does not split into rafts of 4"):
        raft_norm_to_ours(official, 4)


def test_the_raft_norm_permutation_equals_the_official_rearrange() -> None:
    """LayerNorm over the official "(c1 c2)" order == LayerNorm with permuted parameters over our channel order."""
    channels, raft = 6, 2
    x = torch.randn(3, channels)  # our channel order: c = k * (C / r) + co
    weight, bias = torch.randn(channels), torch.randn(channels)
    official_order = x.reshape(3, raft, channels // raft).transpose(1, 2).reshape(3, channels)  # index co * r + k
    expected = torch.nn.functional.layer_norm(official_order, (channels,), weight, bias)
    expected = expected.reshape(3, channels // raft, raft).transpose(1, 2).reshape(3, channels)  # back to ours
    got = torch.nn.functional.layer_norm(x, (channels,), raft_norm_to_ours(weight, raft), raft_norm_to_ours(bias, raft))
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_official_state_dict_loads_strictly(raftmlp_s) -> None:
    official = zero_state("raftmlp", "raftmlp_s")
    assert manifest("raftmlp")["models"]["raftmlp_s"]["params"] == n_params(raftmlp_s) == 9_868_768
    official["levels.2.fn.7.1.norm.1.weight"] = torch.arange(256.0)  # level 2, block 5, vertical
    official["levels.2.fn.7.3.norm.1.bias"] = torch.arange(256.0)  # horizontal
    official["levels.2.fn.7.5.norm.weight"] = torch.arange(256.0)  # the channel block's norm: not permuted
    official["levels.2.fn.7.3.fn.0.weight"] = torch.ones(56, 28)
    official["levels.3.fn.0.fc.bias"] = torch.arange(512.0)
    ours = convert_official(official, raftmlp_s).state_dict()
    permuted = torch.arange(256.0).reshape(128, 2).T.flatten()
    assert torch.equal(ours["stages.2.blocks.10.norm1.weight"], permuted)
    assert torch.equal(ours["stages.2.blocks.11.norm1.bias"], permuted)
    assert torch.equal(ours["stages.2.blocks.11.norm2.weight"], torch.arange(256.0))
    assert torch.equal(ours["stages.2.blocks.11.token_mixer.horizontal.fc1.weight"], torch.ones(56, 28))
    assert torch.equal(ours["stages.3.downsample.fc.bias"], torch.arange(512.0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["raftmlp_m", "raftmlp_l"])
def test_the_other_sizes_load_strictly(name: str) -> None:
    model = convert_official(zero_state("raftmlp", name), name)
    assert n_params(model) == manifest("raftmlp")["models"][name]["params"]


def test_a_checkpoint_with_a_missing_and_an_extra_key_names_both(raftmlp_s) -> None:
    official = zero_state("raftmlp", "raftmlp_s")
    del official["levels.1.fn.3.5.fn.3.bias"]
    official["heads.1.1.weight"] = torch.zeros(512)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, raftmlp_s)
    assert "heads.1.1.weight" in str(err.value) and "stages.1.blocks.3.channel_mixer.fc2.bias" in str(err.value)
