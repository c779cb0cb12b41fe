"""Channel layouts and the one permute between them."""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from metablocks.registry import Component, Context, Layout

_PERMUTES = {("channels_first", "channels_last"): (0, 2, 3, 1), ("channels_last", "channels_first"): (0, 3, 1, 2)}


def permutation(src: Layout, dst: Layout) -> tuple[int, ...] | None:
    """The permute taking a 4-D tensor from ``src`` to ``dst`` layout; None when nothing is to be done."""
    return _PERMUTES.get((src, dst))


def to_layout(x: Tensor, src: Layout, dst: Layout) -> Tensor:
    dims = permutation(src, dst)
    return x if dims is None else x.permute(dims)


def resolve(wanted: Layout, default: Layout) -> Layout:
    """The layout a component works in: its own, or ``default`` for layout-agnostic ("any") ones."""
    return default if wanted == "any" else wanted


Site = Literal["channels_first", "channels_last", "vector"]
"""Where a nested component runs: a (B, C, H, W) map, a (B, H, W, C) map, or a pooled (B, C) vector."""


class Relayout(nn.Module):
    """Runs ``inner`` in its own layout inside a tensor of another (a BatchNorm in Swin's channels-last patch merging,
    a BatchNorm or GRN on a head's pooled vector, seen as a 1x1 map); the inner module keeps its own weights."""

    def __init__(self, inner: nn.Module, *, site: Site, inner_layout: Layout) -> None:
        super().__init__()
        self.inner, self.site, self.inner_layout = inner, site, inner_layout
        outer: Layout = "channels_last" if site == "vector" else site  # a vector site, seen as a map: (B, H, W, C)
        # the permutes as plain int lists (identity when the layouts agree: a view), so TorchScript takes forward
        self._to_inner = list(permutation(outer, inner_layout) or (0, 1, 2, 3))
        self._from_inner = list(permutation(inner_layout, outer) or (0, 1, 2, 3))

    def forward(self, x: Tensor) -> Tensor:
        if self.site == "vector":  # (B, C), or (B, H, W, C) in a head without global pool, as a (B, L, 1, C) map: no
            shape = x.shape  # branch on the rank, so torch.fx traces it
            x = x.reshape(shape[0], -1, 1, shape[-1])
            return self.inner(x.permute(self._to_inner)).permute(self._from_inner).reshape(shape)
        return self.inner(x.permute(self._to_inner)).permute(self._from_inner)


def build_at(component: Component, dim: int, site: Site, *, resolution: tuple[int, int] | None = None) -> nn.Module:
    """Build a nested component (a norm in a stem, downsample or head) for the tensor it will really see.

    A layout-agnostic component is built for the site; one with a fixed layout, or one that needs a map where the site
    is a vector (``takes_vector`` False), is wrapped in a Relayout (a vector site holds channels last: (B, C), or
    (B, H, W, C) in a head without global pool). Norms that fit their site are built as they are,
    so their state_dict names do not change.
    """
    own = type(component).layout
    if site == "vector":  # a (B, C) vector, or (B, H, W, C) in a head without global pool: channels last
        if type(component).takes_vector and own == "any":
            return component.build(Context(dim, resolution=resolution, layout="channels_last"))
        inner = "channels_last" if own == "any" else own
        return Relayout(component.build(Context(dim, resolution=resolution, layout=inner)), site=site, inner_layout=inner)
    if own in ("any", site):
        return component.build(Context(dim, resolution=resolution, layout=site))
    return Relayout(component.build(Context(dim, resolution=resolution, layout=own)), site=site, inner_layout=own)
