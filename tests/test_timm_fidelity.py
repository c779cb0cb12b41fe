"""Every MetaFormer size timm implements: same parameter count, timm's weights load strictly, same logits."""
import pytest
import torch

import metablocks
from metablocks.interop.timm import load_timm_state_dict

timm = pytest.importorskip("timm")

FAST = ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"]
SLOW = ["poolformer_s24", "poolformer_s36", "poolformer_m36", "poolformer_m48",
        "poolformerv2_s24", "poolformerv2_s36", "poolformerv2_m36", "poolformerv2_m48",
        "convformer_s36", "convformer_m36", "convformer_b36", "caformer_s36", "caformer_m36", "caformer_b36"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_equal_to_timm(name: str) -> None:
    ours = metablocks.create_model(name).eval()
    theirs = timm.create_model(name).eval()
    assert ours.recipe.timm_name == name
    assert n_params(ours) == n_params(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() == 0.0  # the same ops in the same order: bit-identical


@pytest.mark.parametrize("name", SLOW)
def test_param_count_every_size(name: str) -> None:
    """Cheap for every size (no forward): the parameter count alone equals timm's."""
    assert n_params(metablocks.create_model(name)) == n_params(timm.create_model(name))


def test_strict_loading_names_the_bad_keys() -> None:
    ours = metablocks.create_model("poolformer_s12")
    weights = timm.create_model("poolformer_s12").state_dict()
    weights["stages.0.blocks.0.extra.weight"] = torch.zeros(1)
    del weights["head.fc.bias"]
    with pytest.raises(ValueError) as err:
        load_timm_state_dict(ours, weights)
    assert "missing in the timm weights (1): head.fc.bias" in str(err.value)
    assert "not in our model (1): stages.0.blocks.0.extra.weight" in str(err.value)
