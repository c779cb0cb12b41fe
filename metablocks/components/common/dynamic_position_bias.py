"""Dynamic position bias (DPB): an MLP maps each relative offset (dy, dx) of a G x G group to one bias per head
(Wang et al., "CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention", ICLR 2022;
the official ``DynamicPosBias``).

    B(dy, dx) = fc3(relu(LN(fc2(relu(LN(fc1(relu(LN(proj([dy, dx])))))))))   (plain, the CrossFormer models)
    residual: p = proj(d); p = p + fc1(relu(LN(p))); p = p + fc2(relu(LN(p))); B = fc3(relu(LN(p)))

Unlike a bias table, the MLP takes any group size: the offsets are coordinates, not indices. The submodule names are
the official ones (``pos_proj``, ``pos1..3`` as LayerNorm -> ReLU -> Linear), so official weights load by name.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def relative_offsets(group: int) -> Tensor:
    """((2G-1)^2, 2) float offsets (dy, dx), dy major: row (dy + G-1) * (2G-1) + (dx + G-1) holds (dy, dx)."""
    steps = torch.arange(1 - group, group)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=1).float()


def offset_index(group: int) -> Tensor:
    """(G^2, G^2) row of ``relative_offsets`` for every (query, key) pair of a row-major G x G group."""
    rows, cols = torch.meshgrid(torch.arange(group), torch.arange(group), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None, :] + group - 1) * (2 * group - 1) + (cols[:, None] - cols[None, :] + group - 1)


def _layer(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, out))


class DynamicPosBias(nn.Module):
    """(G, heads) -> a (1, heads, G^2, G^2) additive attention bias for the tokens of a G x G group."""

    def __init__(self, pos_dim: int, num_heads: int, *, group: int, residual: bool = False) -> None:
        super().__init__()
        self.residual, self.group = residual, group
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = _layer(pos_dim, pos_dim)
        self.pos2 = _layer(pos_dim, pos_dim)
        self.pos3 = _layer(pos_dim, num_heads)
        self.register_buffer("offsets", relative_offsets(group), persistent=False)
        self.register_buffer("index", offset_index(group).flatten(), persistent=False)

    def table(self) -> Tensor:
        """((2G-1)^2, heads): the bias of every offset."""
        pos = self.pos_proj(self.offsets)
        if self.residual:
            pos = pos + self.pos1(pos)
            pos = pos + self.pos2(pos)
            return self.pos3(pos)
        return self.pos3(self.pos2(self.pos1(pos)))

    def forward(self) -> Tensor:
        n = self.group * self.group
        return self.table()[self.index].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)

    def extra_repr(self) -> str:
        return f"group={self.group}, residual={self.residual}"
