"""Long short distance attention (LSDA) with a dynamic position bias (Wang et al., "CrossFormer: A Versatile Vision
Transformer Hinging on Cross-scale Attention", ICLR 2022; cheerss/CrossFormer ``CrossFormerBlock``).

Self-attention inside groups of G x G tokens, with the bias of ``dynamic_position_bias`` (an MLP on (dy, dx)):

* short distance (SDA): each group is a G x G window of adjacent tokens,
  "b (nh gh) (nw gw) c -> (b nh nw) (gh gw) c";
* long distance (LDA): each group takes the tokens I apart inside a GI x GI region,
  "b (rh gh ih) (rw gw iw) c -> (b rh rw ih iw) (gh gw) c", so the group at offset (ih, iw) of a region holds the
  tokens (rh GI + gh I + ih, rw GI + gw I + iw). SDA is LDA with I = 1.

CrossFormer's blocks alternate SDA and LDA (a cycling ``token_mixer`` list); G = 7, I = 8, 4, 2, 1 at 224 (maps 56,
28, 14, 7: one region per map, as the original code's ``H // G`` interval). A map no larger than G is attended as
one group of G = min(H, W) (the official fallback: LDA becomes SDA there). The groups are cut for the map size the
model is built for (no padding, as the original CrossFormer code): its sides must be multiples of the group (SDA)
or of G x I (LDA).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor, nn

from metablocks.components.common.dynamic_position_bias import DynamicPosBias
from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.components.token_mixers.window_attention import biased_attention
from metablocks.fields import Kernel, Probability
from metablocks.registry import Context, register


class LSDAttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    fixed_resolution: ClassVar[bool] = True  # the groups are cut for the map the model is built for
    distance: Literal["short", "long"] = "short"
    group_size: Kernel = 7  # G: a group holds G x G tokens
    interval: Kernel | None = None  # I of long-distance groups; None: (H // G, W // G), one G*I region per map
    qkv_bias: bool = True
    dpb: Literal["plain", "residual"] | None = "plain"  # the position bias MLP (CrossFormer: plain); None: no bias
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0

    def grouping(self, resolution: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """(G, (I_h, I_w)) for a map of ``resolution``: SDA has I = 1; a map no larger than G is one group."""
        height, width = resolution
        if min(height, width) <= self.group_size:
            return min(height, width), (1, 1)
        if self.distance == "short":
            return self.group_size, (1, 1)
        if self.interval is None:
            return self.group_size, (height // self.group_size, width // self.group_size)
        return self.group_size, (self.interval, self.interval)

    def check(self, ctx: Context) -> list[str]:
        errors = []
        errors += self.head_problems(ctx.dim)
        if self.dpb is not None and ctx.dim < 16:
            errors.append(f"dim={ctx.dim} is too narrow for the position bias MLP (dim // 16 = 0 channels)")
        if ctx.resolution is None:
            return errors + ["lsda_attention needs the feature map size (its groups are cut for it)"]
        height, width = ctx.resolution
        group, (ih, iw) = self.grouping(ctx.resolution)
        where = f" of stage {ctx.stage}" if ctx.stage is not None else ""
        if group < self.group_size:
            if height % group or width % group:
                errors.append(f"the {height}x{width} map{where} is no larger than group_size={self.group_size}, so "
                              f"it is attended as {group}x{group} groups, which must divide it")
        elif self.distance == "short" or self.interval is None:
            if height % group or width % group:
                what = ("short distance attention cuts it into" if self.distance == "short" else
                        "long distance attention takes tokens H/G apart into")
                errors.append(f"group_size={group} does not divide the {height}x{width} map{where}: {what} "
                              f"{group}x{group} groups, so its sides must be multiples of {group} (a fixed input "
                              f"resolution)")
        elif height % (group * ih) or width % (group * iw):
            errors.append(f"interval={ih} x group_size={group} = {group * ih} does not divide the {height}x{width} "
                          f"map{where}: long distance attention cuts it into {group * ih}x{group * ih} regions, so its "
                          f"sides must be multiples of {group * ih} (a fixed input resolution)")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        assert ctx.resolution is not None, "lsda_attention needs the feature map size"
        num_heads, head_dim = self.heads(ctx.dim)
        group, interval = self.grouping(ctx.resolution)
        return LSDAttention(ctx.dim, num_heads=num_heads, head_dim=head_dim, group=group, interval=interval,
                            resolution=ctx.resolution, qkv_bias=self.qkv_bias, dpb=self.dpb,
                            attn_drop=self.attn_drop, proj_drop=self.proj_drop)


def to_groups(x: Tensor, regions: tuple[int, int], interval: tuple[int, int], group: int) -> Tensor:
    """(B, H, W, C) -> (B * Rh * Rw * Ih * Iw, G * G, C), "b (rh gh ih) (rw gw iw) c -> (b rh rw ih iw) (gh gw) c":
    group (rh, rw, ih, iw) holds the tokens (rh G Ih + gh Ih + ih, rw G Iw + gw Iw + iw), row-major in (gh, gw)."""
    (rh, rw), (ih, iw), c = regions, interval, x.shape[-1]
    x = x.reshape(-1, rh, group, ih, rw, group, iw, c).permute(0, 1, 4, 3, 6, 2, 5, 7)
    return x.reshape(-1, group * group, c)


def from_groups(x: Tensor, regions: tuple[int, int], interval: tuple[int, int], group: int) -> Tensor:
    """The inverse of ``to_groups``: (B * groups, G * G, C) -> (B, H, W, C)."""
    (rh, rw), (ih, iw), c = regions, interval, x.shape[-1]
    x = x.reshape(-1, rh, rw, ih, iw, group, group, c).permute(0, 1, 5, 3, 2, 6, 4, 7)
    return x.reshape(-1, rh * group * ih, rw * group * iw, c)


@register("token_mixer", "lsda_attention", config=LSDAttentionConfig)
class LSDAttention(nn.Module):
    """Multi-head self-attention inside G x G groups of adjacent (SDA) or I-apart (LDA) tokens, plus a dynamic
    position bias per head (CrossFormer, Wang et al. 2022)."""

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, group: int, interval: tuple[int, int],
                 resolution: tuple[int, int], qkv_bias: bool = True, dpb: str | None = "plain",
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_heads, self.group, self.attn_drop = dim, num_heads, group, attn_drop
        self.interval = tuple(interval)
        ih, iw = self.interval
        self.regions = (resolution[0] // (group * ih), resolution[1] // (group * iw))
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        # the official module sizes its MLP from dim // 4 and then takes a quarter of that: dim // 16 channels
        self.pos = DynamicPosBias(dim // 16, num_heads, group=group, residual=dpb == "residual") if dpb else None
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        groups = to_groups(x, self.regions, self.interval, self.group)  # (B * groups, G*G, C)
        q, k, v = self.qkv(groups).unflatten(2, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        n = self.group * self.group
        bias = self.pos() if self.pos is not None else q.new_zeros(1, 1, n, n)  # (1, heads, N, N)
        out = biased_attention(q, k, v, bias.to(q.dtype), self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))  # (B * groups, N, C)
        return from_groups(out, self.regions, self.interval, self.group)

    def extra_repr(self) -> str:
        kind = "short" if self.interval == (1, 1) else f"long, interval={self.interval}"
        return f"num_heads={self.num_heads}, group={self.group} ({kind})"
