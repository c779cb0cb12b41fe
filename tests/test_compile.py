"""torch.compile: no graph breaks in the blocks, compiled outputs equal eager ones.

The default run traces with dynamo and runs AOTAutograd's graphs (``aot_eager``: same capture and decomposition
as inductor, no C++ build); the slow run also compiles with inductor, and covers every shipped recipe.
"""
import pytest
import torch

import metablocks
from metablocks.blocks import Block

from helpers import small_model  # noqa: E402


def block_inputs(model: torch.nn.Module, size: int) -> list[tuple[Block, tuple]]:
    """The first block of every stage that has blocks, with its real arguments (captured by a hook on an eager
    forward): the map, or a token stream and its map's (H, W)."""
    found: list[tuple[Block, tuple]] = []
    hooks = [stage.blocks[0].register_forward_pre_hook(lambda m, args: found.append((m, (args[0].detach().clone(),
                                                                                     *args[1:]))))
             for stage in model.stages if len(stage.blocks)]  # a stage of depth 0 (LSNet-T's first) has none
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return found


def graph_breaks(module: torch.nn.Module, *args) -> list[str]:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module)(*args)
    return [str(reason.reason) for reason in explanation.break_reasons]


def check_compiled(name: str, backend: str) -> None:
    model, size = small_model(name)
    for block, args in block_inputs(model, size):
        assert graph_breaks(block, *args) == [], f"{name}: graph break in {type(block.token_mixer).__name__} block"
    x = torch.randn(2, 3, size, size)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["poolformer_s12", "caformer_s18"])
def test_compiles_without_graph_breaks(name: str) -> None:
    check_compiled(name, "aot_eager")


def test_training_step_compiles() -> None:
    model, size = small_model("poolformer_s12")
    model.train()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, size, size)
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["poolformer_s12", "caformer_s18"])
def test_inductor_equal(name: str) -> None:
    check_compiled(name, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("name", metablocks.list_recipes())
def test_every_recipe_compiles(name: str) -> None:
    check_compiled(name, "aot_eager")
