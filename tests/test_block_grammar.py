"""The block grammar (issue 11): named slots, branch kinds, block templates and patterns, per-block widths,
transitions, the block composite, depth 0 and per-stage drop path; each against a hand-written torch forward."""
import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.blocks import Block, BlockConfig, make_divisible
from metablocks.recipe.errors import RecipeError

STEM = {"type": "conv", "kernel_size": 2, "stride": 2, "padding": 0}


def recipe(stages, **extra):
    return {"name": "g", "img_size": 16, "num_classes": 3, "stem": STEM, "stages": stages, **extra}


def perturb(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)


def test_named_slot_cpe_branch_without_drop_path() -> None:
    """BiFormer's block: x + dwconv(x) (no norm, no drop path), then the two MetaFormer branches."""
    block = metablocks.MetaFormerBlock(
        dim=8, drop_path=0.5, slots={"cpe": {"type": "dwconv", "kernel_size": 3}}, norm="batchnorm",
        branches=[{"path": ["cpe"], "drop_path": False}, ["norm", "token_mixer"], ["norm", "channel_mixer"]])
    assert sorted(n for n, _ in block.named_children()) == ["channel_mixer", "cpe", "drop_path2", "drop_path3", "norm1",
                                                            "norm2", "token_mixer"]
    perturb(block)
    block.eval()
    x = torch.randn(2, 8, 5, 5)
    y = x + block.cpe(x)
    y = y + block.token_mixer(block.norm1(y))
    y = y + block.channel_mixer(block.norm2(y))
    assert torch.allclose(block(x), y, atol=1e-5)


def test_plain_step_and_a_second_norm_type() -> None:
    """FFNet / LSNet: residual token branch, a squeeze-excite step with no shortcut, residual channel branch; MOAT's two
    norms of different types in one block as named slots."""
    block = metablocks.MetaFormerBlock(
        dim=8, norm=None, slots={"se": {"type": "squeeze_excite"}, "pre_bn": "batchnorm", "pre_ln": "layernorm"},
        branches=[["pre_bn", "token_mixer"], {"path": ["se"], "kind": "plain"}, ["pre_ln", "channel_mixer"]])
    perturb(block)
    block.eval()
    x = torch.randn(2, 8, 4, 4)
    y = x + block.token_mixer(block.pre_bn(x))
    y = block.se(y)
    y = y + block.channel_mixer(block.pre_ln(y))
    assert torch.allclose(block(x), y, atol=1e-5)
    assert isinstance(block.pre_bn, torch.nn.BatchNorm2d) and isinstance(block.pre_ln, torch.nn.LayerNorm)


def test_a_slot_in_two_paths_is_one_shared_module() -> None:
    """NiNformer reuses one LayerNorm for both branches: a named norm slot used twice is one module."""
    block = metablocks.MetaFormerBlock(dim=8, norm=None, slots={"ln": "layernorm"},
                                       branches=[["ln", "token_mixer"], ["ln", "channel_mixer"]])
    perturb(block)
    block.eval()
    x = torch.randn(1, 8, 3, 3)
    y = x + block.token_mixer(block.ln(x))
    y = y + block.channel_mixer(block.ln(y))
    assert torch.allclose(block(x), y, atol=1e-5)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in block.modules()) == 1


def test_concat_branch_grows_the_stream_and_width_rounds_as_timm() -> None:
    """Next-ViT's NTB: plain patch embedding to C1 = make_divisible(0.75 C, 32), attention residual on C1, then a
    concat branch of the remaining C - C1 channels (a projection and a residual block), then the MLP on all C."""
    assert make_divisible(int(256 * 0.75), 32) == 192 and make_divisible(int(1024 * 0.75), 32) == 768
    ntb = dict(
        norm="batchnorm", token_mixer={"type": "attention", "head_dim": 32},
        slots={"patch_embed": {"kind": "channel_mixer", "type": "mlp", "ratio": 1.0},
               "mhca": {"type": "block", "norm": None, "channel_mixer": None,
                        "branches": [{"path": ["token_mixer"], "drop_path": 0.25}],
                        "token_mixer": {"type": "dwconv", "kernel_size": 3}},
               "projection": {"type": "bottleneck", "ratio": 0.5}},
        branches=[{"path": ["patch_embed"], "kind": "plain", "width": 0.75, "round_to": 32},
                  {"path": ["norm", "token_mixer"], "drop_path": 0.75},
                  {"path": ["projection", "mhca"], "kind": "concat"},
                  ["norm", "channel_mixer"]])
    with pytest.raises(RecipeError) as err:  # mlp cannot change the width: said before anything is built
        metablocks.MetaFormerBlock(dim=256, in_dim=320, resolution=(4, 4), **ntb)
    assert "branch 1 must change the map from width 320 to 192, but none of its components (mlp) can" in str(err.value)
    block = metablocks.MetaFormerBlock(dim=256, in_dim=256, drop_path=0.4, resolution=(4, 4),
                                       **{**ntb, "slots": {**ntb["slots"], "patch_embed": {"type": "bottleneck"}}})
    assert block.patch_embed.conv3.out_channels == 192 and block.projection.conv3.out_channels == 64
    assert block.norm1.num_features == 192 and block.norm2.num_features == 256
    assert (block.drop_path2.p, block.mhca.drop_path1.p, block.drop_path4.p) == pytest.approx((0.3, 0.1, 0.4))
    perturb(block)
    block.eval()
    x = torch.randn(2, 256, 4, 4)
    y = block.patch_embed(x)
    y = y + block.token_mixer(block.norm1(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    out = block.projection(y)
    out = out + block.mhca.token_mixer(out)
    y = torch.cat([y, out], dim=1)
    y = y + block.channel_mixer(block.norm2(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert (block(x) - y).abs().max() <= 1e-6 * y.abs().max()  # (perturbed weights: outputs up to 1e6)


def test_templates_patterns_and_per_block_widths() -> None:
    """Next-ViT's stage 3: [ncb, ncb, ncb, ncb, ntb] cycled with widths [384] * 4 + [512] (here scaled down): every block
    whose input width differs from its own makes the transition in its first branch."""
    r = recipe([{"depth": 2, "dim": 16}, {"depth": 5, "dim": [16, 16, 32], "pattern": ["a", "a", "b"], "stride": 2}],
               blocks={"a": {"token_mixer": {"type": "bottleneck", "ratio": 0.5}, "norm": None, "channel_mixer": None,
                             "shortcut": "projection"},
                       "b": {"token_mixer": {"type": "bottleneck", "ratio": 0.25}, "norm": None, "channel_mixer": None,
                             "shortcut": {"type": "projection", "pool": "avg"}}},
               block={"norm": None, "channel_mixer": None, "token_mixer": "pooling"})
    model = metablocks.build_model(r).eval()
    stage = model.stages[1]
    assert [b.token_mixer.conv1.out_channels for b in stage.blocks] == [8, 8, 8, 8, 8]  # b at 32 wide: 0.25 x 32
    assert [b.in_dim for b in stage.blocks] == [16, 16, 16, 32, 16] and [b.dim for b in stage.blocks] == [16, 16, 32, 16, 16]
    assert [hasattr(b, "shortcut") for b in stage.blocks] == [True, False, True, True, False]
    assert stage.blocks[0].shortcut.conv.stride == (2, 2) and not hasattr(stage.blocks[2].shortcut, "pool")  # stride 1
    assert model.feature_info[1]["num_chs"] == 16 and model.feature_info[1]["reduction"] == 4
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    # the resolved recipe lists the templates on the stage that uses them, only what each sets
    dumped = model.recipe.dump()["stages"]
    assert "blocks" not in dumped[0] and set(dumped[1]["blocks"]["a"]) == {"token_mixer", "norm", "channel_mixer", "shortcut"}
    assert metablocks.load_recipe(model.recipe.dump()).model_id == model.recipe.model_id


def test_stage_of_depth_zero_and_per_stage_drop_path() -> None:
    r = recipe([{"depth": 0, "dim": 8}, {"depth": 3, "dim": 8, "drop_path_rate": 0.2}, {"depth": 2, "dim": 8}],
               drop_path_rate=0.5, block={"token_mixer": "pooling", "norm": "groupnorm"})
    model = metablocks.build_model(r)
    assert len(model.stages[0].blocks) == 0
    rates = [[b.drop_path1.p if hasattr(b, "drop_path1") else 0.0 for b in s.blocks] for s in model.stages]
    assert rates[1] == pytest.approx([0.0, 0.1, 0.2])  # its own linspace(0, 0.2, 3)
    assert rates[2] == pytest.approx([0.375, 0.5])  # the model's linspace(0, 0.5, 5) over the 5 blocks
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(RecipeError) as err:
        metablocks.build_model(recipe([{"depth": 1, "dim": 8}, {"depth": 0, "dim": 16}]))
    assert "stages[1].dim: stage 1 has no blocks and no downsample to change the width from 8 to 16" in str(err.value)


def test_grammar_mistakes_are_located_errors() -> None:
    cases = [
        ({"branches": [["cpe"]]}, "branches[0] names slot 'cpe', which this block does not have; its slots: norm, "
                                  "token_mixer, channel_mixer (declare more under slots:)"),
        ({"slots": {"norm2": "layernorm"}}, "slot name 'norm2' is taken by a module the block makes itself"),
        ({"slots": {"token_mixer": "pooling"}}, "slot 'token_mixer' is a standard slot"),
        ({"branches": [{"path": ["token_mixer"], "kind": "plain", "drop_path": 0.5}]},
         "a plain branch has no shortcut to scale or drop: drop_path applies to residual branches only"),
        ({"branches": [{"path": ["token_mixer"], "round_to": 8}]}, "round_to rounds the branch's width: give width too"),
        ({"slots": {"x": {"type": "identity"}}, "branches": [["x"]]}, "'identity' is registered as token_mixer, "
                                                                     "channel_mixer, act: say which with kind: "
                                                                     "(token_mixer | channel_mixer | act)"),
        ({"slots": {"se": "squeeze_excite"}}, "slots.se: slot 'se' is in no branch's path: use it in branches, or "
                                              "remove it"),
        ({"slots": {"x": {"type": "poolin"}}}, "did you mean 'pooling'?"),
        ({"slots": {"x": {"kind": "stem", "type": "conv"}}}, "kind 'stem' is not allowed here; allowed: token_mixer, "
                                                             "channel_mixer, norm, act"),
    ]
    for config, text in cases:
        with pytest.raises(RecipeError) as err:
            metablocks.MetaFormerBlock(dim=8, **config)
        assert text in str(err.value), (config, str(err.value))
    with pytest.raises(RecipeError) as err:
        metablocks.MetaFormerBlock(dim=8, slots={"p": "pooling"}, branches=[{"path": ["p"], "kind": "concat"}])
    assert "branch 1 concatenates to width 8, but the stream already has 8 channels" in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.build_model(recipe([{"depth": 2, "dim": 8, "pattern": ["ncb", "ntb"], "blocks": {"ncb": {}}}]))
    assert "stages[0]: pattern names block template 'ntb' (did you mean 'ncb'?), which is not defined; templates: ncb" in str(err.value)
    with pytest.raises(RecipeError) as err:
        metablocks.build_model(recipe([{"depth": 2, "dim": 8, "blocks": {"ncb": {}}}]))
    assert "defines block templates (ncb) but no pattern: uses them" in str(err.value)


def test_old_blocks_keep_their_names_and_dumps() -> None:
    block = Block(16, BlockConfig(token_mixer="pooling", norm="groupnorm"), io_layout="channels_first")
    assert sorted(n for n, _ in block.named_children()) == ["channel_mixer", "norm1", "norm2", "token_mixer"]
    dumped = BlockConfig(branches=[["token_mixer"], ["norm", "channel_mixer"]]).model_dump(mode="json")
    assert dumped["branches"] == [["token_mixer"], ["norm", "channel_mixer"]] and "slots" not in dumped
    assert "shortcut" not in dumped


def test_the_block_composite_inside_a_gate_like_seq() -> None:
    """A whole block as a token mixer: it is checked like a stage's blocks (its mistakes located inside it)."""
    with pytest.raises(RecipeError) as err:
        metablocks.MetaFormerBlock(dim=6, token_mixer={"type": "block", "token_mixer": {"type": "attention",
                                                                                       "head_dim": 4}})
    assert "token_mixer.token_mixer" in str(err.value) and "dim=6 is not divisible by head_dim=4" in str(err.value)
    block = metablocks.MetaFormerBlock(dim=8, token_mixer={"type": "block", "norm": "batchnorm"}, channel_mixer=None,
                                       norm=None)
    perturb(block)
    block.eval()
    x = torch.randn(1, 8, 4, 4)
    inner = block.token_mixer
    y = x + inner.token_mixer(inner.norm1(x))
    y = y + inner.channel_mixer(inner.norm2(y))
    assert torch.allclose(block(x), x + y, atol=1e-5)
    assert F.mse_loss(block(x), x) > 0


def test_set_token_mixer_on_transitions_and_templates() -> None:
    """Swapping the mixer of a stage whose first block is a transition keeps the transition; a stage whose mixers come
    from block templates says where to edit them instead of changing nothing."""
    r = recipe([{"depth": 2, "dim": 8}, {"depth": 2, "dim": 16, "stride": 2}],
               block={"norm": None, "channel_mixer": None, "shortcut": "projection",
                      "token_mixer": {"type": "bottleneck", "ratio": 0.5}})
    model = metablocks.build_model(r)
    model.set_token_mixer({"type": "bottleneck", "ratio": 0.25}, stages=[1])
    assert model.stages[1].blocks[0].in_dim == 8 and model.stages[1].blocks[0].token_mixer.conv1.out_channels == 4
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    templated = metablocks.build_model(recipe([{"depth": 2, "dim": 8, "pattern": ["a"],
                                                "blocks": {"a": {"token_mixer": "identity"}}}]))
    with pytest.raises(RecipeError) as err:
        templated.set_token_mixer("pooling")
    assert "stage 0 takes its token mixers from its block templates (a): set_token_mixer would not reach them" in str(err.value)
