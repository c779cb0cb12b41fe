"""MOAT weights from the official TensorFlow code (google-research/deeplab2, model/pixel_encoder/moat.py) into the
``moat_*`` recipes: variable names and layouts (NHWC kernels, per-head projections) to our state_dict.

``variables`` maps TF variable names to arrays, as ``tf.train.load_checkpoint(path)`` reads a released checkpoint
(``{n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}``) or as ``{v.name: v.numpy() for v in
model.variables}`` gives them for a built Keras model. Names may carry the ``:0`` suffix and the ``moat/stem/`` scope
that released checkpoints put on the stem; ``ema=True`` takes the ``/ExponentialMovingAverage`` copies where they
exist (the evaluated weights of the released checkpoints). Nothing here imports TensorFlow.

    stem: conv_{i}, norm_{i}                    -> stem.conv{i+1}, stem.norm{i+1}
    moat/block_SS_BB/pre_norm                  -> stages.S.blocks.B.pre_bn
    moat/block_SS_BB/{expand,depthwise,shrink}_conv, {expand,depthwise}_norm, se/{reduce,expand}_conv2d
                                               -> stages.S.blocks.B.token_mixer.<same>, se.{reduce,expand}
    moat/block_SS_BB/shortcut_conv             -> stages.S.blocks.B.shortcut.conv
    moat/block_SS_BB/attention_norm            -> stages.S.blocks.B.pre_ln
    moat/block_SS_BB/attention/{q,k,v,o,relative_position_embedding}
                                               -> stages.S.blocks.B.attention.{qkv,proj,relative_position_embedding}
    moat/final_layer_norm, moat/logits_head    -> head.norm, head.fc
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

EMA = "/ExponentialMovingAverage"
_NORM = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_MBCONV = {"expand_conv", "expand_norm", "depthwise_conv", "depthwise_norm", "shrink_conv"}
_BLOCK = re.compile(r"^moat/block_(\d+)_(\d+)/(.+)/([^/]+)$")


def _clean(variables: Mapping[str, Any], ema: bool) -> dict[str, np.ndarray]:
    """Names without ``:0`` and the stem's ``moat/stem/`` scope; EMA copies in place of the raw weights if asked."""
    out: dict[str, np.ndarray] = {}
    for name, value in variables.items():
        name = name.removesuffix(":0").removeprefix("moat/stem/")
        if name.endswith(EMA):
            if ema:
                out[name.removesuffix(EMA)] = np.asarray(value)
            continue
        if not ema or name not in out:
            out[name] = np.asarray(value)
    return out


def _kernel(value: np.ndarray) -> np.ndarray:
    """A TF conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw); depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)."""
    return value.transpose(3, 2, 0, 1)


def _layer(prefix: str, layer: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """One conv/norm variable of layer ``layer`` (TF name) under our ``prefix``."""
    if leaf in _NORM:
        return f"{prefix}.{_NORM[leaf]}", value
    if leaf == "depthwise_kernel":
        return f"{prefix}.weight", value.transpose(2, 3, 0, 1)
    if leaf == "kernel":
        return f"{prefix}.weight", _kernel(value)
    if leaf == "bias":
        return f"{prefix}.bias", value
    raise KeyError(f"unexpected variable {layer}/{leaf}")


def convert(variables: Mapping[str, Any], *, ema: bool = False) -> dict[str, Tensor]:
    """Our state_dict (tensors) from deeplab2 MOAT variables; every variable is used exactly once, else KeyError."""
    tf = _clean(variables, ema)
    out: dict[str, np.ndarray] = {}
    attention: dict[str, dict[str, np.ndarray]] = {}
    for name, value in tf.items():
        if match := re.fullmatch(r"(conv|norm)_(\d+)/(\w+)", name):
            kind, i, leaf = match.groups()
            key, value = _layer(f"stem.{kind}{int(i) + 1}", name, leaf, value)
        elif name.startswith("moat/final_layer_norm/"):
            key, value = _layer("head.norm", name, name.rsplit("/", 1)[1], value)
        elif name.startswith("moat/logits_head/"):
            leaf = name.rsplit("/", 1)[1]
            key, value = ("head.fc.weight", value[0, 0].T) if leaf == "kernel" else ("head.fc.bias", value)
        elif match := _BLOCK.match(name):
            stage, block, layer, leaf = match.groups()
            prefix = f"stages.{int(stage)}.blocks.{int(block)}"
            if layer.startswith("attention/"):
                attention.setdefault(prefix, {})[f"{layer.split('/', 1)[1]}/{leaf}"] = value
                continue
            if leaf == "relative_position_embedding" and layer == "attention":
                attention.setdefault(prefix, {})[leaf] = value
                continue
            ours = {"pre_norm": "pre_bn", "attention_norm": "pre_ln", "shortcut_conv": "shortcut.conv",
                    "se/reduce_conv2d": "token_mixer.se.reduce", "se/expand_conv2d": "token_mixer.se.expand",
                    **{n: f"token_mixer.{n}" for n in _MBCONV}}.get(layer)
            if ours is None:
                raise KeyError(f"unexpected deeplab2 MOAT variable {name!r}")
            key, value = _layer(f"{prefix}.{ours}", name, leaf, value)
        else:
            raise KeyError(f"unexpected deeplab2 MOAT variable {name!r}")
        if key in out:
            raise KeyError(f"two deeplab2 variables map onto {key}")
        out[key] = value
    for prefix, parts in attention.items():
        dim = parts["o/bias"].shape[0]
        out[f"{prefix}.attention.qkv.weight"] = np.concatenate([parts[f"{p}/weight"].reshape(dim, -1).T for p in "qkv"])
        out[f"{prefix}.attention.qkv.bias"] = np.concatenate([parts[f"{p}/bias"].reshape(-1) for p in "qkv"])
        out[f"{prefix}.attention.proj.weight"] = parts["o/weight"].reshape(-1, dim).T
        out[f"{prefix}.attention.proj.bias"] = parts["o/bias"]
        if "relative_position_embedding" in parts:
            out[f"{prefix}.attention.relative_position_embedding"] = parts["relative_position_embedding"]
        left = set(parts) - {"o/bias", "o/weight", "relative_position_embedding", *(f"{p}/{w}" for p in "qkv"
                                                                                     for w in ("weight", "bias"))}
        if left:
            raise KeyError(f"unexpected deeplab2 MOAT attention variables under {prefix}: {sorted(left)}")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def load_tf_moat(model: torch.nn.Module, variables: Mapping[str, Any], *, ema: bool = False) -> None:
    """Load deeplab2 MOAT variables into a ``moat_*`` model, strictly (every tensor of the model, nothing more);
    BatchNorm's ``num_batches_tracked`` counters (which TF has not) are kept as they are."""
    state = convert(variables, ema=ema)
    own = model.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, own[key])
    mismatched = [f"{k}: ours {tuple(own[k].shape)}, deeplab2 {tuple(v.shape)}" for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError("deeplab2 MOAT shapes differ from the model's: " + "; ".join(mismatched))
    model.load_state_dict(state, strict=True)
