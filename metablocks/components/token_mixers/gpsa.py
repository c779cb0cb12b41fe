"""Gated positional self-attention (d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional
Inductive Biases", ICML 2021): per head, a learned gate mixes content attention with a positional attention over
the relative offsets (dx, dy, dx^2 + dy^2) of the map's tokens, initialized to attend locally, like a convolution.

    attn_h = (1 - sigmoid(g_h)) softmax(q k^T / sqrt(d)) + sigmoid(g_h) softmax(r_ij . v_h),  then rows renormalized
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metablocks.components.acts.elementwise import eager_inference
from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Probability, Scale
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing


class GpsaConfig(MultiHeadConfig):
    layout = "channels_last"
    qkv_bias: bool = False
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0
    locality_strength: Scale = 1.0  # the sharpness of the local init of the positional attention (alpha)

    def check(self, ctx: Context) -> list[str]:
        num_heads, head_dim = self.exact_heads(ctx.dim)
        if num_heads * head_dim != ctx.dim:
            return [f"gpsa splits dim={ctx.dim} into its heads: {num_heads} heads of {head_dim} do not make it"]
        return []

    def build(self, ctx: Context) -> nn.Module:
        num_heads, _ = self.exact_heads(ctx.dim)
        return GatedPositionalAttention(ctx.dim, num_heads=num_heads, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop,
                                        proj_drop=self.proj_drop, locality_strength=self.locality_strength,
                                        resolution=ctx.resolution)


def relative_offsets(hw: tuple[int, int]) -> Tensor:
    """(N, N, 3): for tokens i, j of an H x W map in raster order, (x_j - x_i, y_j - y_i, squared distance)."""
    ys, xs = torch.meshgrid(torch.arange(hw[0], dtype=torch.float32), torch.arange(hw[1], dtype=torch.float32),
                            indexing="ij")
    dx = xs.flatten()[None, :] - xs.flatten()[:, None]
    dy = ys.flatten()[None, :] - ys.flatten()[:, None]
    return torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1)


@register("token_mixer", "gpsa", config=GpsaConfig)
class GatedPositionalAttention(nn.Module):
    """Content attention and positional attention, gated per head (d'Ascoli et al. 2021); (B, H, W, C) in and out."""

    traced_at_built_size = True  # torch.fx (sizes are proxies) bakes the offsets of the built map

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, locality_strength: float = 1.0,
                 resolution: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.locality_strength = locality_strength
        self.built = tuple(resolution) if resolution is not None else (0, 0)
        # the offsets of the map it is built for (other sizes compute theirs); torch.fx bakes these
        self.register_buffer("built_offsets", relative_offsets(self.built) if resolution else torch.zeros(0, 0, 3),
                             persistent=False)
        self.after_init()

    @torch.no_grad()
    def after_init(self) -> None:
        """v = identity; head h's positional attention peaks at offset h of a sqrt(heads) x sqrt(heads) kernel (the
        official init, applied after the model's own init of the layers in ConViT)."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        kernel = int(self.num_heads ** 0.5)
        center = (kernel - 1) / 2 if kernel % 2 == 0 else kernel // 2
        for h1 in range(kernel):
            for h2 in range(kernel):
                position = h1 + kernel * h2
                self.pos_proj.weight[position, 2] = -1
                self.pos_proj.weight[position, 1] = 2 * (h1 - center)
                self.pos_proj.weight[position, 0] = 2 * (h2 - center)
        self.pos_proj.weight.mul_(self.locality_strength)

    def offsets(self, hw: tuple[int, int]) -> Tensor:
        """(N, N, 3) offsets of an ``hw`` map (the built ones as they are)."""
        if (not torch.jit.is_scripting() and fx_tracing()) or (hw[0] == self.built[0] and hw[1] == self.built[1]):
            return self.built_offsets
        return relative_offsets(hw).to(self.built_offsets)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        qk = self.qk(tokens).reshape(B, H * W, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        position = self.pos_proj(self.offsets((H, W))).permute(2, 0, 1).softmax(dim=-1)  # (heads, N, N)
        gate = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        scores = qk[0] @ qk[1].transpose(-2, -1)  # (B, heads, N, N)
        if not self.training and not torch.jit.is_scripting() and eager_inference(scores):
            # the same products in the memory of the (B, heads, N, N) maps, as timm's ``attn /=``: 3 maps fewer
            content = scores.mul_(self.scale).softmax(dim=-1)
            attn = content.mul_(1.0 - gate).add_(gate * position)
            attn = attn.div_(attn.sum(dim=-1, keepdim=True))
        else:
            content = (scores * self.scale).softmax(dim=-1)
            attn = (1.0 - gate) * content + gate * position
            attn = self.attn_drop(attn / attn.sum(dim=-1, keepdim=True))
        v = self.v(tokens).reshape(B, H * W, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        out = (attn @ v).transpose(1, 2).reshape(B, H * W, C)
        return self.proj_drop(self.proj(out)).reshape(B, H, W, C)
