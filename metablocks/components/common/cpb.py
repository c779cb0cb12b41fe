"""Pieces of TransNeXt's attention (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", CVPR
2024) shared by ``aggregated_attention`` and ``cpb_attention``: the continuous position bias (CPB) table on
log-spaced relative coordinates, the spreading of its MLP's output to every pair, and the softplus temperature of
the length-scaled cosine attention.

Length-scaled cosine similarity of a query q and a key k, with n the number of keys the query sees:

    logit = (q / |q| + query_embedding) . (k / |k|) * softplus(temperature) * log(n) + bias
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEMPERATURE_INIT = 1 / 0.24  # the official init of softplus(temperature)
CPB_SPAN = 8.0  # relative coordinates are scaled to [-8, 8] across the pretrain map, then log2(|x| + 1) / log2(8)


def temperature_init(num_heads: int) -> Tensor:
    """The raw (pre-softplus) temperature per head, (heads, 1, 1), so that softplus of it is 1/0.24."""
    return torch.full((num_heads, 1, 1), math.log(math.expm1(TEMPERATURE_INIT)))


@torch.no_grad()
def cpb_table(query_size: tuple[int, int], key_size: tuple[int, int],
              pretrain_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """(index (Nq * Nk,), coords (T, 2)): the distinct relative positions of a query grid and a key grid and which of
    them each (query, key) pair has, as the official ``get_relative_position_cpb``.

    Key positions are the centres of the adaptive-average-pool cells over the query grid's axes (a pooled key sits at
    the mean of the positions it averages); the offset q - k is scaled by 8 / (pretrain side - 1), then
    ``sign(x) * log2(|x| + 1) / log2(8)``. The table is ``unique`` (sorted), the index its inverse.
    """
    pretrain_size = pretrain_size or query_size
    values, inverse = [], []
    for q_len, k_len, pre in zip(query_size, key_size, pretrain_size):
        q_axis = torch.arange(q_len, dtype=torch.float32, device="cpu")  # cpu: unique has no meta kernel
        k_axis = F.adaptive_avg_pool1d(q_axis[None], k_len)[0]
        axis_values, axis_index = torch.unique((q_axis[:, None] - k_axis[None, :]) / (pre - 1) * CPB_SPAN,
                                               return_inverse=True)
        values.append(axis_values)
        inverse.append(axis_index)  # (q_len, k_len)
    # every (row offset, column offset) pair occurs, so the sorted distinct pairs are the product of the sorted
    # distinct offsets of each axis (what unique(dim=0) of all pairs gives, without sorting Nq * Nk rows)
    (vh, vw), (ih, iw) = values, inverse
    coords = torch.cartesian_prod(vh, vw)
    index = ih[:, None, :, None] * len(vw) + iw[None, :, None, :]  # (qh, qw, kh, kw)
    index = index.reshape(query_size[0] * query_size[1], key_size[0] * key_size[1]).reshape(-1)
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(CPB_SPAN)
    return on_default_device(index), on_default_device(coords)


def on_default_device(t: Tensor) -> Tensor:
    """``t`` (built on the cpu) on the device modules are being built on (meta when limits measure a recipe)."""
    return t.to(torch.get_default_device())


def cpb_bias(table: Tensor, index: Tensor, queries: int, keys: int) -> Tensor:
    """(heads, Nq, Nk): the CPB MLP's output on the distinct coordinates, (T, heads), spread to every (query, key)
    pair through the table's index."""
    return table.transpose(0, 1)[:, index].view(-1, queries, keys)


def checked_map(built: tuple[int, int], height: int, width: int, what: str) -> None:
    """A ValueError naming the built grid when a mixer with grid-sized buffers meets another map."""
    if (height, width) != built:
        raise ValueError(f"{what} were built for a fixed {built[0]}x{built[1]} token grid; got a {height}x{width} map "
                         f"(build the model with img_size= to change it)")


def grid_problems(resolution: tuple[int, int] | None, pretrain: int | None, what: str) -> list[str]:
    """The checks every CPB mixer shares: it needs the map's size, and a side of 2 or more to scale coordinates by."""
    if resolution is None:
        return [f"{what} is built for a fixed token grid (its position-bias tables and length scales are sized by the "
                f"map): it needs the map's resolution; give the recipe an img_size"]
    sides = (pretrain, pretrain) if pretrain is not None else resolution
    if min(sides) < 2:
        return [f"{what} scales relative coordinates by the map's side - 1, so it needs a map of at least 2x2; "
                f"got {'cpb_pretrain_size=' + str(pretrain) if pretrain is not None else 'a %dx%d map' % resolution}"]
    return []


def register_cpb_tables(module: nn.Module, query_size: tuple[int, int], key_size: tuple[int, int],
                        pretrain_size: int | None = None) -> None:
    """``cpb_table``'s index and coordinates on ``module`` as non-persistent buffers, under the official names
    ``relative_pos_index`` and ``relative_coords_table`` (``pretrain_size``: the side the coordinates are scaled by)."""
    index, coords = cpb_table(query_size, key_size, (pretrain_size,) * 2 if pretrain_size is not None else None)
    module.register_buffer("relative_pos_index", index, persistent=False)
    module.register_buffer("relative_coords_table", coords, persistent=False)
