"""A token mixer of your own, in your own file: register it and it is valid in YAML at once.

Run: python examples/custom_mixer.py
From the CLI, load this file with --plugin (or METABLOCKS_PLUGINS) and every command knows the mixer:
    metablocks validate examples/custom_mixer.yaml --plugin examples/custom_mixer.py
    metablocks info examples/custom_mixer.yaml --plugin examples/custom_mixer.py
    METABLOCKS_PLUGINS=examples/custom_mixer.py metablocks sweep plan examples/custom_mixer_sweep.yaml
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

import metablocks
from metablocks import Component, Context


class GlobalContextConfig(Component):
    """Config of the mixer below: its fields are the module's keyword arguments, validated from YAML."""

    layout = "channels_first"  # the mixer works on (B, C, H, W); the block permutes only if neighbours disagree
    reduction: int = 4

    def check(self, ctx: Context) -> list[str]:
        return [] if ctx.dim % self.reduction == 0 else [f"reduction={self.reduction} must divide dim={ctx.dim}"]


@metablocks.register("token_mixer", "global_context", config=GlobalContextConfig)
class GlobalContext(nn.Module):
    """Global average context through a bottleneck MLP, broadcast back to every token (GCNet-like, Cao et al. 2019)."""

    def __init__(self, dim: int, *, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, dim // reduction, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(dim // reduction, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        context = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return self.fc2(self.act(self.fc1(context))).expand_as(x)


RECIPE = """
name: poolformer_gc_s12
extends: poolformerv2_s12
stage_defaults:
  - {}
  - {}
  - {token_mixer: {type: global_context, reduction: 8}, res_scale: 1.0}
  - {token_mixer: {type: global_context, reduction: 8}, res_scale: 1.0}
"""


def main() -> dict[str, float]:
    import yaml

    # 1. in a recipe, like any built-in mixer
    model = metablocks.build_model(yaml.safe_load(RECIPE), num_classes=10).eval()
    logits = model(torch.randn(2, 3, 224, 224))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{model.recipe.name}: logits {tuple(logits.shape)}, {params:.2f}M params, id {model.recipe.model_id}")

    # 2. as a standalone block
    block = metablocks.MetaFormerBlock(dim=64, token_mixer={"type": "global_context", "reduction": 8})
    print("block:", tuple(block(torch.randn(2, 64, 14, 14)).shape))

    # 3. swapped into a built model: stage 3 of a PoolFormer now uses it
    pool = metablocks.create_model("poolformer_s12")
    pool.set_token_mixer({"type": "global_context"}, stages=[3])
    print("swapped:", pool.recipe.stages[3].token_mixer[0].name)

    # 4. a mistake in its fields is a RecipeError naming the field
    try:
        metablocks.MetaFormerBlock(dim=64, token_mixer={"type": "global_context", "reducton": 8})
    except metablocks.RecipeError as err:
        print("a typo on purpose ('reducton' for 'reduction'), to show the error it gets:")
        print("   ", str(err).replace("\n", "\n    "))
    return {"params_m": params}


if __name__ == "__main__":
    main()
