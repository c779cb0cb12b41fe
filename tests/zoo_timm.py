"""Shared checks for the recipe-zoo tests: our model against timm's, weight for weight."""
from __future__ import annotations

import torch

import metablocks
from metablocks.interop.timm import load_timm_state_dict


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every 1-D parameter (norm affines, biases, layer scales) and BatchNorm statistics off their init.

    Layer scales start at 1e-6 and norms at identity, so untouched weights would let a wrong block pass as
    "equal logits"; after this every branch contributes to the output.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.2)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=gen) * 1.5 + 0.5)


def assert_equal_to_timm(name: str, params: int, timm_module, batch: int = 2) -> None:
    """Same parameter count (``params``, measured), timm's weights load strictly, logits within 1e-4 (fp32)."""
    ours = metablocks.create_model(name).eval()
    theirs = timm_module.create_model(name).eval()
    assert ours.recipe.timm_name == name
    assert n_params(ours) == params
    assert n_params(theirs) == params
    perturb(theirs)
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == expected.shape == (batch, 1000)
    assert expected.abs().max().item() > 0.1  # the perturbed blocks really move the logits
    assert (got - expected).abs().max().item() <= 1e-4


def token_model_pair(name: str, **timm_kwargs):
    """(ours, timm's) for a token model: timm's weights perturbed, its prefix tokens and position table moved off their
    init too (random normal), loaded into ours."""
    import timm

    theirs = timm.create_model(name, **timm_kwargs).eval()
    perturb(theirs)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for token in ("cls_token", "dist_token", "pos_embed"):
            if getattr(theirs, token, None) is not None:
                getattr(theirs, token).copy_(torch.randn(getattr(theirs, token).shape, generator=gen))
    ours = metablocks.create_model(name).eval()
    load_timm_state_dict(ours, theirs.state_dict())
    return ours, theirs
