"""Cross-shaped window attention with locally-enhanced positional encoding (Dong et al., "CSWin Transformer: A General
Vision Transformer Backbone with Cross-Shaped Windows", CVPR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metablocks.components.token_mixers.attention import MultiHeadConfig
from metablocks.fields import Kernel, Probability
from metablocks.registry import Context, register
from metablocks.tracing import fx_tracing


class CSWinAttentionConfig(MultiHeadConfig):
    layout = "channels_last"
    split_size: Kernel | None = 7  # stripe width; None: every head attends over the whole map (CSWin's last stage)
    qkv_bias: bool = True
    proj_bias: bool = True
    lepe_kernel_size: Kernel = 3
    attn_drop: Probability = 0.0
    proj_drop: Probability = 0.0

    def check(self, ctx: Context) -> list[str]:
        errors = self.partition_problems(ctx.dim)
        num_heads, _ = self.heads(ctx.dim)
        if self.split_size is not None:
            if num_heads % 2:
                errors.append(f"stripe attention splits the heads in half (horizontal, vertical): "
                              f"num_heads={num_heads} is odd")
            if self.split_size < 1:
                errors.append(f"split_size must be at least 1, got {self.split_size}")
            elif ctx.resolution and any(r % self.split_size for r in ctx.resolution):
                where = f" of stage {ctx.stage}" if ctx.stage is not None else ""
                errors.append(f"split_size={self.split_size} does not divide the {ctx.resolution[0]}x{ctx.resolution[1]} "
                              f"map{where}: stripes need a map size that is a multiple of {self.split_size}")
        if self.lepe_kernel_size % 2 == 0:
            errors.append(f"lepe_kernel_size must be odd to keep the stripe size, got {self.lepe_kernel_size}")
        return errors

    def build(self, ctx: Context) -> nn.Module:
        num_heads, head_dim = self.heads(ctx.dim)
        return CSWinAttention(ctx.dim, num_heads=num_heads, head_dim=head_dim, split_size=self.split_size,
                              qkv_bias=self.qkv_bias, proj_bias=self.proj_bias, lepe_kernel_size=self.lepe_kernel_size,
                              attn_drop=self.attn_drop, proj_drop=self.proj_drop)


def stripes(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B * H/sh * W/sw, sh*sw, C): the map cut into (sh, sw) windows, each read row-major."""
    batch, height, width, channels = x.shape
    sh, sw = size
    x = x.view(batch, height // sh, sh, width // sw, sw, channels).permute(0, 1, 3, 2, 4, 5)  # (b, nh, nw, sh, sw, c)
    return x.reshape(-1, sh * sw, channels)


@register("token_mixer", "cswin_attention", config=CSWinAttentionConfig)
class CSWinAttention(nn.Module):
    """Half the heads attend inside vertical stripes (full height, ``split_size`` wide), half inside horizontal
    ones; a depthwise conv of V inside each stripe (LePE) is added to the attention output (CSWin, Dong et al. 2022)."""

    traced_at_built_size = True  # stripes need maps that split_size divides: pretrained_cfg says fixed_input_size

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, split_size: int | None = 7, qkv_bias: bool = True,
                 proj_bias: bool = True, lepe_kernel_size: int = 3, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.split_size, self.attn_drop = split_size, attn_drop
        self.branches = 1 if split_size is None else 2
        self.heads_per_branch = num_heads // self.branches
        inner = num_heads * head_dim
        width = inner // self.branches  # channels of q, k and v in one branch
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.get_v = nn.ModuleList(nn.Conv2d(width, width, lepe_kernel_size, padding=lepe_kernel_size // 2, groups=width)
                                   for _ in range(self.branches))
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def stripe_size(self, branch: int, height: int, width: int) -> tuple[int, int]:
        """The (sh, sw) window of ``branch``: 0 vertical stripes, 1 horizontal ones; the whole map without split."""
        split = self.split_size
        if split is None:
            return height, width
        return (height, split) if branch == 0 else (split, width)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        # views and permutes rather than einops patterns, so torch.fx and TorchScript trace it (the same tensors)
        batch, height, width, _ = x.shape
        if not torch.jit.is_scripting() and not fx_tracing():
            self._check_size(height, width)
        heads = self.heads_per_branch
        qkv = self.qkv(x).view(batch, height, width, 3, self.branches, -1).permute(4, 3, 0, 1, 2, 5)  # (g, 3, B, H, W, c)
        outs = []
        for g, lepe_conv in enumerate(self.get_v):
            sh, sw = self.stripe_size(g, height, width)
            q = self._heads(stripes(qkv[g, 0], (sh, sw)), heads)  # (n, heads, sh*sw, d)
            k = self._heads(stripes(qkv[g, 1], (sh, sw)), heads)
            v = self._heads(stripes(qkv[g, 2], (sh, sw)), heads)
            n, d = v.shape[0], v.shape[-1]
            # LePE: a depthwise conv of V inside each stripe (zero-padded at the stripe's border)
            lepe = lepe_conv(v.transpose(1, 2).reshape(n, sh, sw, heads * d).permute(0, 3, 1, 2))  # (n, c, sh, sw)
            lepe = lepe.reshape(n, heads, d, sh * sw).transpose(2, 3)  # (n, heads, sh*sw, d)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0) + lepe
            out = out.view(batch, height // sh, width // sw, heads, sh, sw, d).permute(0, 1, 4, 2, 5, 3, 6)
            outs.append(out.reshape(batch, height, width, heads * d))  # (B, H, W, C / branches)
        return self.proj_drop(self.proj(torch.cat(outs, dim=-1)))

    @torch.jit.unused
    def _check_size(self, height: int, width: int) -> None:
        if self.split_size is not None and (height % self.split_size or width % self.split_size):
            raise ValueError(f"cswin attention: split_size={self.split_size} does not divide this input's "
                             f"{height}x{width} map: stripes need map sides that are multiples of {self.split_size}")

    @staticmethod
    def _heads(t: Tensor, heads: int) -> Tensor:
        """(n, L, heads * d) -> (n, heads, L, d)."""
        n, length, channels = t.shape
        return t.view(n, length, heads, channels // heads).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"split_size={self.split_size}, heads_per_branch={self.heads_per_branch}"
