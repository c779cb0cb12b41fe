"""Composite components (issue 11): split, sum and seq hold other components, are validated, checked at the width
their parts see, in the JSON Schema and drawn by the property test like any other component."""
import collections
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metablocks
from metablocks import RecipeError
from metablocks.components.composites.split import Split
from metablocks.registry import Context, Ref
from recipe_fuzz import component, fields_of, holds, is_leaf, shipped_configs

OUTCOMES: collections.Counter = collections.Counter()


def mixer(spec, kind="token_mixer"):
    return Ref(kind).validate(spec)


PCONV = {"type": "split", "parts": [{"channels": 0.25, "mixer": {"type": "conv", "kernel_size": 3}},
                                     {"channels": "rest", "mixer": "identity"}]}


def test_split_is_the_partial_convolution() -> None:
    """FasterNet's PConv: a dense 3x3 conv on the first dim // 4 channels, the rest passed through, in order."""
    torch.manual_seed(0)
    module = mixer(PCONV).build(Context(16))
    assert isinstance(module, Split) and module.widths == [4, 12]
    assert [k for k in module.state_dict()] == ["parts.0.weight"]  # the conv's weight, no wrapper names
    x = torch.randn(2, 16, 5, 5)
    by_hand = torch.cat([F.conv2d(x[:, :4], module.parts[0].weight, padding=1), x[:, 4:]], dim=1)
    assert torch.equal(module(x), by_hand)


def test_split_widths_fractions_ints_and_rest() -> None:
    config = mixer({"type": "split", "parts": [{"channels": 8}, {"channels": "rest"}, {"channels": 0.5}]})
    assert config.widths(32) == [8, 8, 16]  # rest = 32 - 8 - int(0.5 x 32)
    assert config.widths(30) == [8, 7, 15]


def test_split_parts_run_in_their_own_layout_in_a_channels_last_stream() -> None:
    """A channels-first conv part inside a split built channels-last: the slice is permuted in and out."""
    torch.manual_seed(0)
    module = mixer(PCONV).build(Context(8, layout="channels_last"))
    x = torch.randn(2, 5, 5, 8)  # (B, H, W, C)
    conv = F.conv2d(x[..., :2].permute(0, 3, 1, 2), module.parts[0].weight, padding=1).permute(0, 2, 3, 1)
    assert torch.allclose(module(x), torch.cat([conv, x[..., 2:]], dim=-1), atol=1e-6)


def test_sum_adds_scaled_parallel_mixers() -> None:
    """HAT's form: f(x) + 0.01 g(x); here a 3x3 conv plus 0.01 x pooling (avg_pool(x) - x)."""
    torch.manual_seed(0)
    config = mixer({"type": "sum", "parts": [{"mixer": {"type": "conv", "kernel_size": 3}},
                                              {"mixer": {"type": "pooling", "pool_size": 3}, "scale": 0.01}]})
    module = config.build(Context(6))
    x = torch.randn(2, 6, 7, 7)
    pool = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x
    assert torch.allclose(module(x), F.conv2d(x, module.parts[0].weight, padding=1) + 0.01 * pool, atol=1e-6)


def test_seq_applies_parts_in_order_with_norms_and_acts() -> None:
    """Parts may be norms and acts too (a part keeps the map's shape): BN (eval) -> GELU -> 1x1 conv."""
    torch.manual_seed(0)
    config = mixer({"type": "seq", "parts": ["batchnorm", "gelu", {"type": "conv", "kernel_size": 1}]})
    module = config.build(Context(4)).eval()
    bn = module.parts[0]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    x = torch.randn(2, 4, 3, 3)
    by_hand = F.conv2d(F.gelu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=1e-5)),
                       module.parts[2].weight)
    with torch.no_grad():
        assert torch.allclose(module(x), by_hand, atol=1e-6)


def test_a_part_of_another_kind_is_named_with_kind() -> None:
    """``identity`` in a token mixer's part is the identity token mixer; ``kind:`` picks the act, and it round-trips."""
    config = mixer({"type": "seq", "parts": ["identity", {"kind": "act", "type": "identity"}]})
    assert [p.kind for p in config.parts] == ["token_mixer", "act"]
    dumped = config.dump()
    assert dumped["parts"] == [{"type": "identity"}, {"kind": "act", "type": "identity"}]
    assert mixer(dumped) == config
    channel = mixer({"type": "split", "parts": [{"channels": 0.5}, {"channels": "rest", "mixer": "conv"}]},
                    "channel_mixer")
    assert [p.mixer.kind for p in channel.parts] == ["channel_mixer", "channel_mixer"]  # its own kind first


def test_composites_in_a_recipe_build_script_and_trace() -> None:
    recipe = metablocks.load_recipe("poolformer_s12", {
        "stages[0].token_mixer": {"type": "split", "parts": [
            {"channels": 16, "mixer": {"type": "attention", "head_dim": 8}},  # channels-last inside channels-first
            {"channels": "rest", "mixer": {"type": "seq", "parts": ["pooling", {"kind": "act", "type": "gelu"}]}}]},
        "stages[1].channel_mixer": {"type": "sum", "parts": [{"mixer": "mlp"}, {"mixer": "conv", "scale": 0.5}]},
        "img_size": 64})
    model = metablocks.build_model(recipe).eval()
    names = set(model.state_dict())
    assert "stages.0.blocks.0.token_mixer.parts.0.qkv.weight" in names
    assert "stages.1.blocks.0.channel_mixer.parts.1.weight" in names
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)(x)
        traced = torch.fx.symbolic_trace(model.stages[0].blocks[0])(model.stem(x))
    assert torch.allclose(scripted, expected, atol=1e-5)
    assert torch.allclose(traced, model.stages[0].blocks[0](model.stem(x)), atol=1e-6)


@pytest.mark.parametrize("parts, message", [
    ([{"channels": 0.5}, {"channels": 0.25}],
     "token_mixer 'split': the parts take 32 (0.5) + 16 (0.25) = 48 channels but dim=64; give them a total of 64, "
     "or let one part take the rest (channels: rest)"),
    ([{"channels": "rest"}, {"channels": "rest"}],
     "token_mixer 'split': at most one part may take the rest of the channels; parts 0, 1 do"),
    ([{"channels": 0.01}, {"channels": "rest"}],
     "token_mixer 'split': part 0 gets no channels at dim=64 (int(0.01 x 64) = 0)"),
    ([{"channels": 40}, {"channels": 24}, {"channels": "rest"}],
     "token_mixer 'split': the rest is empty: the other parts take 40 + 24 = 64 of dim=64 channels"),
])
def test_split_width_errors(parts, message) -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("poolformer_s12", {"stages[0].token_mixer": {"type": "split", "parts": parts}})
    assert message in str(err.value)
    assert err.value.problems[0].path == "stages[0].token_mixer"


def test_a_part_is_checked_at_its_own_width_and_located() -> None:
    """64 channels: the 0.25 part has 16, so attention with 3 heads is wrong there (at 64 it would be too)."""
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("poolformer_s12", {"stages[0].token_mixer": {"type": "split", "parts": [
            {"channels": 0.25, "mixer": {"type": "attention", "num_heads": 3}},
            {"channels": "rest", "mixer": {"type": "seq", "parts": ["pooling", {"type": "groupnorm", "num_groups": 5}]}}]}})
    problems = {p.path: p.message for p in err.value.problems}
    assert problems["stages[0].token_mixer.parts[0].mixer"] == "token_mixer 'attention': dim=16 is not divisible by num_heads=3"
    assert problems["stages[0].token_mixer.parts[1].mixer.parts[1]"] == "norm 'groupnorm': num_groups=5 does not divide dim=48"


def test_part_field_errors() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("poolformer_s12", {"stages[0].token_mixer": {"type": "split", "parts": [
            {"channels": 1.5}, {"channels": True}, {"channels": "rest", "mixer": {"kind": "head", "type": "linear"}},
            {"channels": 2, "mixer": "bogus"}]}})
    text = str(err.value)
    assert ("stages[0].token_mixer.parts[0].channels: channels takes a fraction of the width in (0, 1), a number of "
            "channels (1 to 65536) or 'rest' (given: 1.5)") in text
    assert "parts[1]: channels takes a number, given the boolean true" in text
    assert "parts[2].mixer: kind 'head' cannot be a part here; allowed: token_mixer, channel_mixer, norm, act" in text
    assert "parts[3].mixer: unknown token_mixer 'bogus'" in text
    with pytest.raises(RecipeError) as err:
        metablocks.load_recipe("poolformer_s12", {"stages[0].token_mixer": {"type": "sum", "parts": [{"mixer": "pooling"}]}})
    assert "stages[0].token_mixer.parts: List should have at least 2 items" in str(err.value)


def test_json_schema_holds_composites_and_validates_nested_ones() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from metablocks.commands.schema import resolved_schema

    schema = resolved_schema()
    text = json.dumps(schema)
    for name in ("split", "sum", "seq"):
        assert f'"{name} (token_mixer)"' in text and f'"{name} (channel_mixer)"' in text
    recipe = metablocks.load_recipe("poolformer_s12", {"stages[0].token_mixer": {"type": "split", "parts": [
        {"channels": 0.5, "mixer": {"type": "seq", "parts": ["batchnorm", {"kind": "act", "type": "identity"}, {
            "type": "split", "parts": [{"channels": 3}, {"channels": "rest", "mixer": "pooling"}]}]}},
        {"channels": "rest"}]}})
    checker = jsonschema.Draft7Validator(schema)
    data = yaml.safe_load(recipe.to_yaml())
    assert not list(checker.iter_errors(data))
    inner = data["stages"][0]["token_mixer"]["parts"][0]["mixer"]["parts"][2]["parts"]
    inner[0]["channels"] = "all"
    assert list(checker.iter_errors(data))


def test_the_property_test_draws_composites_without_end() -> None:
    """Composites are drawn from the registry like every component; past MAX_DEPTH only leaves are drawn."""
    names = {cfg.name for cfg in shipped_configs("token_mixer")}
    assert {"split", "sum", "seq"} <= names
    composites = {cfg.name for cfg in shipped_configs("token_mixer") if not is_leaf(cfg)}
    assert {"split", "sum", "seq"} <= composites and not composites & {"conv", "attention", "pooling", "block"}
    deep = component("token_mixer", depth=10)
    drawn = [deep.example() for _ in range(30)]
    assert not any(d["type"] in composites for d in drawn)


def test_info_describes_composites_part_by_part() -> None:
    from metablocks.commands.info import describe

    assert describe(mixer(PCONV)) == "split(parts=[channels=0.25: conv, channels=rest: identity])"
    seq = mixer({"type": "seq", "parts": ["batchnorm", {"type": "conv", "kernel_size": 1}]}, "channel_mixer")
    assert describe(seq) == "seq(parts=[batchnorm, conv(kernel_size=1)])"


COMPOSITES = [cfg for cfg in shipped_configs("token_mixer") if cfg.name in ("split", "sum", "seq")]


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(COMPOSITES).flatmap(
    lambda cfg: fields_of(cfg, 1).map(lambda fields, name=cfg.name: {"type": name, **fields})),
    st.sampled_from([8, 12, 16, 32]))
def test_drawn_composites_validate_then_run(mixer_spec, dim) -> None:
    """The property test's rule on composites alone, in a plain two-stage recipe (the random recipes also draw them,
    among everything else): a located RecipeError, or a model whose forward and backward are finite."""
    torch.set_num_threads(1)
    raw = {"name": "composite", "img_size": 32, "stem": {"type": "conv", "kernel_size": 4, "stride": 4, "padding": 0},
           "stages": [{"depth": 1, "dim": dim, "token_mixer": mixer_spec},
                      {"depth": 1, "dim": dim, "token_mixer": mixer_spec, "layout": "channels_last"}]}
    OUTCOMES[holds(raw)] += 1


def test_most_drawn_composites_run() -> None:
    """The draws are not mostly rejected (measured: 14 of the 30 ran, on 8x8 maps, with zoo II's mixers in the pool;
    the rejections are split parts that do not add up to the width and mixers that need larger maps or other widths,
    each a located RecipeError)."""
    if not OUTCOMES:  # run alone
        test_drawn_composites_validate_then_run()
    assert OUTCOMES["ran"] >= 12, OUTCOMES
