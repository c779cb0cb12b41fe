"""ConViT Ti/S/B (d'Ascoli et al., ICML 2021) as recipes: equal to timm's convit_* (strict load, logits), the class
token put in after block 10 (a second stage), GPSA's relative offsets and gate by hand."""
from __future__ import annotations

import pytest
import torch

import metablocks
from metablocks.components.token_mixers.gpsa import GatedPositionalAttention, relative_offsets
from zoo_timm import n_params, perturb

timm = pytest.importorskip("timm")

PARAMS = {"convit_tiny": 5_710_512, "convit_small": 27_777_322, "convit_base": 86_540_040}  # = timm's


@pytest.mark.parametrize("name", ["convit_tiny", pytest.param("convit_small", marks=pytest.mark.slow),
                                  pytest.param("convit_base", marks=pytest.mark.slow)])
def test_equal_to_timm(name: str) -> None:
    from metablocks.interop.timm import load_timm_state_dict

    theirs = timm.create_model(name).eval()
    perturb(theirs)
    with torch.no_grad():  # the class token, positions and gates off their init
        theirs.cls_token.normal_()
        theirs.pos_embed.normal_()
        for block in theirs.blocks[:10]:
            block.attn.gating_param.normal_()
    ours = metablocks.create_model(name).eval()
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 0.5
    assert (got - expected).abs().max().item() <= 1e-5  # measured 1.8e-7 (tiny)


def test_structure_and_local_init() -> None:
    """Stage 0: 10 GPSA blocks on the 196 patch tokens (+ the patches' positions); stage 1 puts the class token in for
    2 self-attention blocks. GPSA starts local, as timm's: v = identity and the positional heads on a 2x2 kernel."""
    model = metablocks.create_model("convit_tiny")
    assert [len(s.blocks) for s in model.stages] == [10, 2]
    assert model.stages[0].pos_embed.weight.shape == (1, 196, 192) and not hasattr(model.stages[0], "prefix_tokens")
    assert model.stages[1].prefix_tokens.cls.shape == (1, 1, 192) and not hasattr(model.stages[1], "pos_embed")
    gpsa = model.stages[0].blocks[0].token_mixer
    assert torch.equal(gpsa.v.weight, torch.eye(192))
    assert gpsa.pos_proj.weight.tolist() == [[-1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [1.0, 1.0, -1.0]]
    reference = timm.create_model("convit_tiny")
    assert torch.equal(gpsa.pos_proj.weight, reference.blocks[0].attn.pos_proj.weight)


def test_relative_offsets_by_hand() -> None:
    """Tokens of a 2x3 map in raster order: token 0 at (y, x) = (0, 0), token 5 at (1, 2)."""
    offsets = relative_offsets((2, 3))
    assert offsets.shape == (6, 6, 3)
    assert offsets[0, 5].tolist() == [2.0, 1.0, 5.0]  # dx, dy, dx^2 + dy^2
    assert offsets[5, 0].tolist() == [-2.0, -1.0, 5.0]
    assert offsets[4, 4].tolist() == [0.0, 0.0, 0.0]


def test_gate_chooses_between_content_and_position() -> None:
    """A gate far negative leaves content attention alone; far positive, the positional one: with v = identity and
    proj = identity, each output token is then the offset-weighted mean of its neighbours, whatever q and k are."""
    torch.manual_seed(0)
    attn = GatedPositionalAttention(4, num_heads=1).eval()
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(4))
        attn.proj.bias.zero_()
        attn.pos_proj.weight.copy_(torch.tensor([[0.0, 0.0, -50.0]]))  # all weight on distance 0: the token itself
        attn.pos_proj.bias.zero_()
        attn.gating_param.fill_(50.0)
    x = torch.randn(1, 3, 3, 4)
    assert torch.allclose(attn(x), x, atol=1e-5)


def test_other_map_sizes_get_their_own_offsets() -> None:
    model = metablocks.create_model("convit_tiny").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 160, 192))  # 10x12 patches: positions resized, offsets for 10x12
    assert out.shape == (1, 1000)
    gpsa = model.stages[0].blocks[0].token_mixer
    assert gpsa.built_offsets.shape == (196, 196, 3) and gpsa.offsets((10, 12)).shape == (120, 120, 3)


def test_feature_levels_and_pruning_as_timm() -> None:
    """Both stages keep the 14x14 map, so ConViT is isotropic: a level per block (12, timm's blocks.0-11), the final
    norm on each with norm=True; pruned inside stage 0 (no class token yet) or stage 1, forward gives the tokens as
    timm's pruned model does."""
    from metablocks.interop.timm import load_timm_state_dict

    theirs = timm.create_model("convit_tiny").eval()
    perturb(theirs)
    ours = metablocks.create_model("convit_tiny").eval()
    load_timm_state_dict(ours, theirs.state_dict())
    assert [f["module"] for f in ours.feature_info] == [f"stages.0.blocks.{j}" for j in range(10)] + [
        "stages.1.blocks.0", "stages.1.blocks.1"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for norm in (False, True):
            expected = theirs.forward_intermediates(x, norm=norm, intermediates_only=True)
            got = ours.forward_intermediates(x, norm=norm, intermediates_only=True)
            assert len(got) == 12 and max((a - b).abs().max().item() for a, b in zip(got, expected)) <= 1e-5
        for level, tokens in ((5, 196), (10, 197)):
            t, o = timm.create_model("convit_tiny").eval(), metablocks.create_model("convit_tiny").eval()
            t.load_state_dict(theirs.state_dict())
            o.load_state_dict(ours.state_dict())
            t.prune_intermediate_layers([level])
            o.prune_intermediate_layers([level])
            assert [len(s.blocks) for s in o.stages] == ([6] if level == 5 else [10, 1])
            expected, got = t(x), o(x)
            assert got.shape == expected.shape == (1, tokens, 192)
            assert (got - expected).abs().max().item() <= 1e-5  # measured 0.0 / 9.5e-7
