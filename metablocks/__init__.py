"""metablocks: composable MetaFormer blocks; vision backbones as YAML recipes.

    model = metablocks.create_model("caformer_s18")
    model = metablocks.build_model("my_recipe.yaml", overrides={"stages[2].token_mixer.type": "attention"})
"""
from typing import Iterable

from metablocks.blocks import Block, BlockConfig, MetaFormerBlock, register_block_shape
from metablocks.deploy import deploy
from metablocks.interop.timm import load_pretrained
from metablocks.model import MetaModel, build_model, create_model
from metablocks.recipe import Recipe, RecipeError, load_recipe, shipped_recipes
from metablocks.recipe.checks import check_recipe
from metablocks.recipe.limits import limits
from metablocks.registry import Component, Context, Ref, register

__version__ = "0.1.0"


def list_recipes(filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = ()) -> list[str]:
    """Names of the shipped recipes (``create_model`` takes any of them), filtered like ``timm.list_models``:
    ``list_recipes("*former*")``; a pattern matches a recipe's name or its ``timm_name``."""
    import fnmatch

    from metablocks.model import timm_names

    include = [filter] if isinstance(filter, str) else list(filter)
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    aliases: dict[str, list[str]] = {name: [name] for name in shipped_recipes()}
    for timm_name, name in timm_names().items():
        aliases[name].append(timm_name)

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(alias, p) for alias in aliases[name] for p in patterns if p)

    return sorted(name for name in aliases
                  if (not any(include) or matches(name, include)) and not matches(name, exclude))


def list_components(kind: str | None = None) -> dict[str, list[str]] | list[str]:
    """Registered component names, for one kind or all kinds."""
    from metablocks import registry

    if kind is not None:
        return registry.names(kind)
    return {k: registry.names(k) for k in registry.KINDS}


__all__ = ["Block", "BlockConfig", "Component", "Context", "MetaFormerBlock", "MetaModel", "Recipe", "RecipeError", "Ref",
           "build_model", "check_recipe", "create_model", "deploy", "limits", "list_components", "list_recipes",
           "load_pretrained", "load_recipe", "register",
           "register_block_shape"]
