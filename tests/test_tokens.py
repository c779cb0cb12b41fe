"""Tokens and embeddings: prefix tokens (CLS, distillation, registers) on a token stream, position embeddings as
components, token heads; ViT/DeiT equal to timm, also at other input sizes (the position embedding resized)."""
from __future__ import annotations

import textwrap

import pytest
import torch

import metablocks
from metablocks.blocks import MetaFormerBlock
from metablocks.recipe import RecipeError
from zoo_timm import n_params, token_model_pair

timm = pytest.importorskip("timm")

PARAMS = {  # measured; equal to timm's
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_distilled_patch16_224": 22_436_432,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
}
FAST = ("deit_tiny_patch16_224", "deit_small_distilled_patch16_224")


def timm_pair(name: str):
    """Our model with timm's perturbed weights loaded (the prefix tokens and position table moved off their init)."""
    return token_model_pair(name, dynamic_img_size=True)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PARAMS])
def test_equal_to_timm_at_224_and_at_other_sizes(name: str) -> None:
    ours, theirs = timm_pair(name)
    assert n_params(ours) == n_params(theirs) == PARAMS[name]
    for size in [(224, 224), (256, 192)]:  # 16x12 patches: the 14x14 table resized, bicubic and antialiased
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        assert expected.abs().max() > 0.5
        assert (got - expected).abs().max().item() <= 1e-5  # measured 0.0


def test_state_dict_names() -> None:
    model = metablocks.create_model("deit_small_distilled_patch16_224")
    keys = list(model.state_dict())
    assert keys[:4] == ["stem.conv.weight", "stem.conv.bias", "stages.0.prefix_tokens.cls", "stages.0.prefix_tokens.dist"]
    assert keys[4] == "stages.0.pos_embed.weight" and model.stages[0].pos_embed.weight.shape == (1, 2 + 196, 384)
    assert keys[-6:] == ["head.norm.weight", "head.norm.bias", "head.fc.cls.weight", "head.fc.cls.bias",
                         "head.fc.dist.weight", "head.fc.dist.bias"]


def test_the_stream_is_tokens_end_to_end() -> None:
    """One (B, 1 + 196, C) stream through every block: no permute, no map in between (ViT's layout)."""
    model = metablocks.create_model("deit_tiny_patch16_224")
    stage = model.stages[0]
    assert all(block.layout == block.io_layout == "tokens" for block in stage.blocks)
    assert all(perm is None for perm in stage._perms) and not stage.blocks[0]._passthrough
    seen = []
    stage.blocks[3].register_forward_hook(lambda m, args, out: seen.append((args[0].shape, args[1])))
    model(torch.randn(1, 3, 224, 224))
    assert seen == [(torch.Size([1, 197, 192]), (14, 14))]


def test_distilled_head_averages_the_two_classifiers() -> None:
    model = metablocks.create_model("deit_small_distilled_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, 2 + 196, C): the head reads tokens 0 and 1
        normed = model.head.norm(tokens[:, :2])
        expected = (model.head.fc.cls(normed[:, 0]) + model.head.fc.dist(normed[:, 1])) / 2
        assert tokens.shape == (1, 198, 384)
        assert torch.allclose(model.forward_head(tokens), expected, atol=1e-6)
        assert torch.allclose(model.forward_head(tokens, pre_logits=True), normed.mean(1), atol=1e-6)


def test_position_embedding_resize_equals_timm() -> None:
    from timm.layers import resample_abs_pos_embed

    embed = metablocks.create_model("deit_tiny_patch16_224").stages[0].pos_embed
    with torch.no_grad():
        embed.weight.normal_()
    for hw in [(14, 14), (16, 12), (7, 9)]:
        expected = resample_abs_pos_embed(embed.weight, new_size=hw, old_size=(14, 14), num_prefix_tokens=1)
        assert torch.equal(embed.resized(hw), expected)


def test_sincos_equals_timm() -> None:
    from timm.layers import build_sincos2d_pos_embed

    from metablocks.components.pos_embeds.sincos import sincos_2d

    assert torch.allclose(sincos_2d((5, 7), 32), build_sincos2d_pos_embed((5, 7), 32), atol=1e-6)
    # the first position is the origin: sin 0 = 0 and cos 0 = 1 for both coordinates; then (y, x) = (0, 1)
    assert sincos_2d((2, 2), 8)[0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert torch.allclose(sincos_2d((2, 2), 8)[1], torch.tensor([0.0, 0.0, 0.8415, 0.01, 1.0, 1.0, 0.5403, 1.0]),
                          atol=1e-4)  # sin(1 * 1), sin(1 / 100), cos(1), cos(1 / 100) for x = 1


def test_features_and_intermediates_are_maps_of_the_map_tokens() -> None:
    model = metablocks.create_model("deit_tiny_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224)
    final, levels = model.forward_intermediates(x, indices=[0, 11])
    assert [tuple(level.shape) for level in levels] == [(1, 192, 14, 14)] * 2
    assert final.shape == (1, 197, 192)  # the stream, prefix tokens included, for the head
    with torch.no_grad():
        assert torch.allclose(model.forward_head(final), model(x), atol=1e-5)
        assert torch.allclose(levels[1], final[:, 1:].transpose(1, 2).reshape(1, 192, 14, 14))
    features = metablocks.create_model("deit_tiny_patch16_224", features_only=True, out_indices=(-1,))
    (out,) = features(x)
    assert out.shape == (1, 192, 14, 14)


TINY_VIT = """\
name: tiny_vit
img_size: 32
num_classes: 10
stem: {type: conv, kernel_size: 4, stride: 4, padding: 0}
block:
  norm: layernorm
  token_mixer: {type: attention, head_dim: 8, qkv_bias: true}
stages:
  - {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}
head: {type: token, reads: [cls]}
"""


def tiny(tmp_path, text: str = TINY_VIT, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("mixer", ["pooling", "sepconv", "token_mlp", "{type: attention, sr_ratio: 2}",
                                   "{type: attention, head_dim: 8}"])
def test_every_kind_of_mixer_runs_beside_a_cls_token(tmp_path, mixer: str) -> None:
    """Mixers that need the map run on the map tokens, the CLS token passing them (its path still normalizes it and
    its MLP applies); attention attends over it. Forward and backward, the CLS token gets gradients."""
    path = tiny(tmp_path, TINY_VIT.replace("token_mixer: {type: attention, head_dim: 8, qkv_bias: true}",
                                           f"token_mixer: {mixer}"))
    model = metablocks.build_model(path)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.stages[0].prefix_tokens.cls.grad.abs().sum() > 0


def test_passthrough_leaves_the_prefix_tokens_to_the_rest_of_the_path() -> None:
    """A block [[token_mixer]] with a pooling mixer on a token stream: the map tokens get x + (pool(x) - x), exactly the
    map block's output; the prefix passes the mixer, so the residual doubles it."""
    config = dict(branches=[["token_mixer"]], token_mixer="pooling", norm=None, channel_mixer=None)
    from metablocks.blocks import Block, BlockConfig

    block = Block(8, BlockConfig(**config), io_layout="tokens", prefix=("cls", "dist"), resolution=(4, 5))
    reference = MetaFormerBlock(8, **config)
    x = torch.randn(2, 2 + 20, 8)
    out = block(x, (4, 5))
    assert torch.equal(out[:, :2], 2 * x[:, :2])
    grid = x[:, 2:].transpose(1, 2).reshape(2, 8, 4, 5)
    assert torch.allclose(out[:, 2:], reference(grid).flatten(2).transpose(1, 2), atol=1e-6)


def test_registers_are_attended_and_not_read(tmp_path) -> None:
    model = metablocks.build_model(tiny(tmp_path, TINY_VIT.replace("{cls: 1}", "{cls: 1, registers: 4}")))
    assert model.stages[0].prefix_tokens.registers.shape == (1, 4, 16)
    assert model.stages[0].pos_embed.weight.shape == (1, 5 + 64, 16)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 69, 16)
    mean = metablocks.build_model(tiny(tmp_path, TINY_VIT.replace("reads: [cls]", "reads: [mean]"), "m.yaml"))
    x = torch.randn(1, 3, 32, 32)
    tokens = mean.forward_features(x)
    assert torch.allclose(mean.forward_head(tokens, pre_logits=True), mean.head.norm(tokens[:, 1:].mean(1)))


def test_prefix_position_embedding_can_leave_the_prefix_out(tmp_path) -> None:
    """``prefix: false`` (DeiT III, ConViT): the table covers the map tokens only; the prefix tokens get none."""
    model = metablocks.build_model(tiny(tmp_path, TINY_VIT.replace("pos_embed: learned",
                                                                   "pos_embed: {type: learned, prefix: false}")))
    embed = model.stages[0].pos_embed
    assert embed.weight.shape == (1, 64, 16)
    x = torch.randn(1, 65, 16)
    out = embed(x, (8, 8))
    assert torch.equal(out[:, :1], x[:, :1]) and torch.equal(out[:, 1:], x[:, 1:] + embed.weight)


def test_existing_map_stages_are_unchanged() -> None:
    """A map stage has no prefix_tokens/pos_embed modules and runs as before (model ids: test_recipe_edits)."""
    model = metablocks.create_model("poolformer_s12")
    assert not any(stage.tokens for stage in model.stages)
    assert not any(k.split(".")[2] in ("prefix_tokens", "pos_embed") for k in model.state_dict() if k.startswith("stages."))
    assert "prefix_tokens" not in metablocks.load_recipe("poolformer_s12").stages[0].model_dump()


@pytest.mark.parametrize("edit, message", [
    (("head: {type: token, reads: [cls]}", "head: linear"),
     "head: the last stage carries prefix tokens (cls) to the head, but head linear pools a map and would ignore "
     "them: use head: {type: token, reads: [cls]}"),
    (("prefix_tokens: {cls: 1}, ", ""),
     "head token reads a token stream, but the last stage gives a map: give it prefix_tokens"),
    (("reads: [cls]", "reads: [cls, dist]"),
     "head token reads the dist token, which the last stage does not carry (its prefix tokens: cls); add it to the "
     "stage's prefix_tokens"),
    (("{cls: 1}", "{cls: 2}"), "stages[0].prefix_tokens.cls"),
    (("{cls: 1}", "{cls: 0}"), "stages[0].prefix_tokens: prefix_tokens puts in no token (cls, dist and registers are "
                               "all 0): give a count, or leave prefix_tokens out"),
    (("- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}",
      "- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}\n"
      "  - {depth: 1, dim: 32, downsample: {type: conv, kernel_size: 2, stride: 2, padding: 0}}"),
     "stages[1].downsample: stage 1's downsample conv changes the width from 16 to 32, but has no rule for the prefix "
     "tokens (cls) carried in from the stage before: they would keep width 16; use a downsample that projects them "
     "too (conv_head_pooling: PiT's depthwise-conv pooling with a linear layer for the tokens)"),
    (("- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}",
      "- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}\n  - {depth: 1, dim: 16, layout: channels_last}"),
     "stages[1].layout: stage 1 carries the prefix tokens (cls) put in before it, so its blocks run on a token "
     "stream: layout channels_last cannot carry them (write layout: tokens, or leave layout out)"),
    (("- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}",
      "- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}\n"
      "  - {depth: 1, dim: 16, prefix_tokens: {cls: 1, registers: 2}}"),
     "stages[1].prefix_tokens: stage 1 puts in a cls token, but the cls token of an earlier stage is carried in "
     "already: a stream has one cls token"),
    (("- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}",
      "- {depth: 2, dim: 16, prefix_tokens: {cls: 1}, pos_embed: learned}\n"
      "  - {depth: 1, dim: 24, downsample: conv_head_pooling}"),
     "downsample 'conv_head_pooling': a depthwise pooling conv takes a width that is a multiple of its input's: 16 -> 24 is not"),
    (("pos_embed: learned}", "pos_embed: learned, stride: 2, token_mixer: {type: sepconv}}"),
     "would change the token stream (width 16 -> 16, stride 2): the blocks of a token stage keep their width and map"),
    (("pos_embed: learned", "pos_embed: {type: sincos, temperature: 1}"), "stages[0].pos_embed"),
])
def test_token_recipe_errors_are_located(tmp_path, edit: tuple[str, str], message: str) -> None:
    path = tiny(tmp_path, TINY_VIT.replace(*edit))
    with pytest.raises(RecipeError) as err:
        metablocks.build_model(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_sincos_needs_a_width_divisible_by_four(tmp_path) -> None:
    path = tiny(tmp_path, TINY_VIT.replace("pos_embed: learned", "pos_embed: sincos").replace("dim: 16", "dim: 18")
                .replace("head_dim: 8", "head_dim: 9"))
    with pytest.raises(RecipeError, match="a 2-D sin-cos position embedding takes a width divisible by 4"):
        metablocks.build_model(path)


def test_mixer_ablation_sweep_over_a_deit_like_model(tmp_path) -> None:
    """attention vs pooling vs token MLP as the token mixer of a DeiT-Ti-like model (CLS token, learned positions),
    trained on scikit-learn's digits."""
    from metablocks.sweep import run_sweep

    (tmp_path / "base.yaml").write_text(TINY_VIT)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent("""\
        name: deit_mixers
        base: base.yaml
        axes:
          - {path: "stages[0].token_mixer", name: mixer, values: [{type: attention, head_dim: 8}, pooling, token_mlp],
             labels: [attention, pooling, token_mlp]}
        data: {source: digits, img_size: 32}
        train: {epochs: 1, batch_size: 64, threads: 1}
        measure: {batch_size: 4, warmup: 0, iters: 1}
        """))
    records = run_sweep(spec, tmp_path / "out", progress=False)
    assert {r["labels"]["mixer"]: r["status"] for r in records} == {"attention": "ok", "pooling": "ok", "token_mlp": "ok"}
    assert all(0 <= r["top1"] <= 100 for r in records)
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| attention |" in table and "| token_mlp |" in table


def test_pruned_like_timm() -> None:
    """prune_intermediate_layers (timm's API): blocks after the last level kept go, the head pools nothing (timm's
    global_pool=''), so forward gives the normalized stream, as timm's pruned ViT."""
    ours, theirs = timm_pair("deit_tiny_patch16_224")
    assert ours.prune_intermediate_layers([5]) == [5] and theirs.prune_intermediate_layers([5]) == [5]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape == (1, 197, 192)
    assert (got - expected).abs().max().item() <= 1e-5  # measured 0.0
    with pytest.raises(ValueError, match="with no pooling there is one classifier, so num_classes=0"):
        metablocks.create_model("deit_small_distilled_patch16_224").reset_classifier(10, "")


def _carried_recipe(mixer: str) -> dict:
    """Stage 0 puts in a class token and a register; stage 1 carries them through PiT's pooling, with ``mixer``."""
    return {"name": "carry", "img_size": 32, "num_classes": 5,
            "stem": {"type": "conv", "kernel_size": 2, "stride": 2, "padding": 0}, "block": {"norm": "layernorm"},
            "stages": [{"depth": 1, "dim": 32, "prefix_tokens": {"cls": 1, "registers": 1}, "pos_embed": "learned",
                        "token_mixer": {"type": "attention", "head_dim": 16}},
                       {"depth": 2, "dim": 64, "downsample": "conv_head_pooling", "token_mixer": {"type": mixer}}],
            "head": {"type": "token", "reads": ["cls"]}}


def _token_mixers() -> list[str]:
    from recipe_fuzz import shipped_configs

    return [cfg.name for cfg in shipped_configs("token_mixer")]


@pytest.mark.parametrize("mixer", _token_mixers())
def test_every_mixer_in_a_stage_carrying_prefix_tokens(mixer: str) -> None:
    """Every registered token mixer (at its defaults) in a stage that carries prefix tokens in: it builds and trains
    (forward, backward and eval finite), or the recipe is rejected with a located error; never a crash."""
    from recipe_fuzz import holds

    outcome = holds(_carried_recipe(mixer))
    assert outcome in ("ran", "rejected")
    if mixer in ("attention", "pooling", "sepconv", "token_mlp", "conv_proj_attention", "gpsa", "window_attention",
                 "criss_cross", "wavelet", "halo_attention"):
        assert outcome == "ran"  # measured: 40 of the 48 shipped mixers run; composites need parts, some sizes
