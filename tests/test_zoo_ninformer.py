"""NiNformer (official code: Abdullah-88/NiNformer ninformer.py, the block stack; train.py, the CIFAR-10 model) as a
recipe over the block grammar: a NiN block is two residual branches over ONE shared LayerNorm slot, its token mixer a
`gate` composite whose f is a whole MLP-Mixer block (the `block` composite).

The official code is not available here: its parameter counts and state_dict keys/shapes are held in
tests/data/ninformer_official_keys.json (written once from the official code), which the converter must map onto our
state_dict exactly. Outside the repository the official NiNBlock's output equalled our block's (max abs diff 0.0,
perturbed weights) and the official model's logits ours (1.2e-7). Here each block is checked against its equations."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.components.composites.gate import Gate, GateConfig
from metablocks.interop.official.ninformer import convert_ninformer, load_ninformer
from metablocks.layout import Relayout
from metablocks.recipe.errors import RecipeError
from metablocks.registry import Context

MANIFEST = json.loads((Path(__file__).parent / "data" / "ninformer_official_keys.json").read_text())
OFFICIAL_PARAMS = 2_652_170  # NiNformerImageClassification(): d_model 256, d_ffn 512, 8x8 patches, 4 blocks
OFFICIAL_BLOCK_PARAMS = 659_264  # NiNBlock(256, 512, 64, 0.5)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture(scope="module")
def model():
    return metablocks.create_model("ninformer_cifar10").eval()


def test_params_equal_the_official_model(model) -> None:
    assert n_params(model) == MANIFEST["model"]["params"] == OFFICIAL_PARAMS
    assert n_params(model.stages[0].blocks[0]) == MANIFEST["block"]["params"] == OFFICIAL_BLOCK_PARAMS


@pytest.mark.parametrize("part", ["model", "block"])
def test_converter_maps_the_official_state_dict_onto_ours(part: str, model) -> None:
    official = {key: torch.zeros(shape) for key, shape in MANIFEST[part]["keys"]}
    ours = (model if part == "model" else model.stages[0].blocks[0]).state_dict()
    converted = convert_ninformer(official)
    assert len(converted) == len(official)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_the_layernorm_is_shared(model) -> None:
    """NiNBlock.norm serves both branches: one module, one set of weights (the `ln` slot used in two paths)."""
    block = model.stages[0].blocks[0]
    assert [name for name, _ in block.named_children()] == ["ln", "token_mixer", "channel_mixer"]
    assert [k for k in block.state_dict() if k.startswith("ln.")] == ["ln.weight", "ln.bias"]
    assert block.ln.eps == 1e-5 and block.token_mixer.f.norm1.eps == 1e-5  # torch's default, as the official


def test_block_by_its_equations(model) -> None:
    """x = x + proj(LN(x)) * Mixer(LN(x)); x = x + ffn(LN(x)) with the same LN; Mixer is MLP-Mixer's block."""
    block = metablocks.create_model("ninformer_cifar10").stages[0].blocks[1].eval()
    perturb(block)
    x = torch.randn(2, 8, 8, 256)  # the block runs channels-last: (B, H, W, C), tokens row-major
    ln = block.ln
    gate, mixer, ffn = block.token_mixer, block.token_mixer.f, block.channel_mixer

    def mixer_block(u: torch.Tensor) -> torch.Tensor:
        t = u.flatten(1, 2)  # (B, N, C)
        tm = mixer.token_mixer
        t = t + tm.fc2(F.gelu(tm.fc1(mixer.norm1(t).transpose(1, 2)))).transpose(1, 2)  # MLP over the 64 tokens
        cm = mixer.channel_mixer
        t = t + cm.fc2(F.gelu(cm.fc1(mixer.norm2(t))))
        return t.reshape(u.shape)

    with torch.no_grad():
        y = x + gate.proj(ln(x)) * mixer_block(ln(x))
        expected = y + ffn.fc2(F.gelu(ffn.fc1(ln(y))))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_model_load_and_run(model) -> None:
    official = {key: torch.randn(shape) if shape else torch.tensor(0) for key, shape in MANIFEST["model"]["keys"]}
    load_ninformer(model, official)
    assert torch.equal(model.stem.conv.weight, official["patcher.weight"])
    assert torch.equal(model.stages[0].blocks[3].token_mixer.f.token_mixer.fc1.weight,
                       official["model.3.mgu.Mixer.token_mix.2.net.0.weight"])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_recipe_records_what_is_guessed() -> None:
    recipe = metablocks.load_recipe("ninformer_cifar10")
    assert recipe.img_size == (32, 32) and recipe.num_classes == 10 and recipe.paper.resolution == 32
    assert "guessed to be the paper's model" in recipe.paper.note and recipe.paper.top1 is None


# ----------------------------------------------------------------------------------------------------------- gate
def test_gate_is_proj_times_f() -> None:
    torch.manual_seed(0)
    gate = GateConfig(f={"type": "mlp", "ratio": 2}).build(Context(8, layout="channels_last"))
    x = torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        assert torch.allclose(gate(x), gate.proj(x) * gate.f(x))
    assert isinstance(gate.proj, torch.nn.Linear) and gate.proj.bias is not None


def test_gate_runs_f_in_f_layout() -> None:
    """A channels-first f (a depthwise conv) in a channels-last gate runs inside a Relayout; a channels-first gate
    projects with a 1x1 conv (the same weights as a Linear)."""
    torch.manual_seed(0)
    last = GateConfig(f={"type": "dwconv", "kernel_size": 3}, bias=False).build(Context(8, layout="channels_last"))
    assert isinstance(last.f, Relayout) and last.proj.bias is None
    first = GateConfig(f={"type": "dwconv", "kernel_size": 3}, bias=False).build(Context(8, layout="channels_first"))
    assert isinstance(first.proj, torch.nn.Conv2d) and not isinstance(first.f, Relayout)
    first.f.load_state_dict(last.f.inner.state_dict())
    first.proj.weight.data.copy_(last.proj.weight[:, :, None, None])
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        assert torch.allclose(first(x), last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-6)


def test_gate_in_a_block() -> None:
    block = metablocks.MetaFormerBlock(dim=16, token_mixer={"type": "gate", "f": {"type": "dwconv", "kernel_size": 3}})
    assert isinstance(block.token_mixer, Gate)
    assert block(torch.randn(1, 16, 6, 6)).shape == (1, 16, 6, 6)


def test_gate_checks_its_f_where_it_sits() -> None:
    with pytest.raises(RecipeError, match=r"token_mixer\.f: token_mixer 'attention': dim=64 is not divisible by "
                                          r"num_heads=7"):
        metablocks.MetaFormerBlock(dim=64, token_mixer={"type": "gate", "f": {"type": "attention", "num_heads": 7}})
    with pytest.raises(RecipeError, match="token_mixer.f: missing field 'f'"):
        metablocks.MetaFormerBlock(dim=64, token_mixer={"type": "gate"})
    # the block composite is one component under two kinds: f takes it without kind:
    block = metablocks.MetaFormerBlock(dim=16, token_mixer={"type": "gate", "f": {"type": "block", "norm": "groupnorm"}})
    assert type(block.token_mixer.f).__name__ == "Block" and block.token_mixer.f.norm1.num_groups == 1


def test_a_token_mlp_inside_the_gate_needs_the_built_grid() -> None:
    with pytest.raises(RecipeError, match="token_mixer.f.token_mixer.hidden_dim"):
        metablocks.load_recipe("ninformer_cifar10", {"block.token_mixer.f.token_mixer.hidden_dim": 0})
    model = metablocks.create_model("ninformer_cifar10", img_size=64)  # a 16x16 grid: the token MLP is 256 wide
    assert model.stages[0].blocks[0].token_mixer.f.token_mixer.fc1.in_features == 256
    with pytest.raises(ValueError, match="fixed 16x16 token grid"):
        model(torch.randn(1, 3, 32, 32))


def test_resolved_dump_round_trips(tmp_path: Path) -> None:
    """The gate, the block inside it and the shared slot survive ``info --resolved``: same model_id, same model."""
    recipe = metablocks.load_recipe("ninformer_cifar10")
    (tmp_path / "resolved.yaml").write_text(recipe.to_yaml())
    again = metablocks.load_recipe(tmp_path / "resolved.yaml")
    assert again.model_id == recipe.model_id and again.dump() == recipe.dump()
