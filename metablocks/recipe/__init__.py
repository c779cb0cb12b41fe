"""Recipes: YAML with positions, the pydantic schema, loading with extends/overrides, and RecipeError."""
from metablocks.recipe.errors import Problem, RecipeError
from metablocks.recipe.loader import load_recipe, recipes_dir, shipped_recipes
from metablocks.recipe.schema import Paper, Recipe, StageConfig

__all__ = ["Paper", "Problem", "Recipe", "RecipeError", "StageConfig", "load_recipe", "recipes_dir", "shipped_recipes"]
