"""metablocks: composable MetaFormer blocks; vision backbones as YAML recipes.

    model = metablocks.create_model("caformer_s18")
    model = metablocks.build_model("my_recipe.yaml", overrides={"stages[2].token_mixer.type": "attention"})
"""
from metablocks.blocks import Block, BlockConfig, MetaFormerBlock, register_block_shape
from metablocks.deploy import deploy
from metablocks.model import MetaModel, build_model, create_model
from metablocks.recipe import Recipe, RecipeError, load_recipe, shipped_recipes
from metablocks.recipe.checks import check_recipe
from metablocks.recipe.limits import limits
from metablocks.registry import Component, Context, Ref, register

__version__ = "0.1.0"


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``create_model`` takes any of them)."""
    return sorted(shipped_recipes())


def list_components(kind: str | None = None) -> dict[str, list[str]] | list[str]:
    """Registered component names, for one kind or all kinds."""
    from metablocks import registry

    if kind is not None:
        return registry.names(kind)
    return {k: registry.names(k) for k in registry.KINDS}


__all__ = ["Block", "BlockConfig", "Component", "Context", "MetaFormerBlock", "MetaModel", "Recipe", "RecipeError", "Ref",
           "build_model", "check_recipe", "create_model", "deploy", "limits", "list_components", "list_recipes", "load_recipe", "register",
           "register_block_shape"]
