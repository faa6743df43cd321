"""The Qwen-VL attention-pool resampler, used as the ViT's pool and as SEED-X's resamplers.

Learned queries on a 2-D grid cross-attend a token grid; both carry fixed 2-D sin-cos
positions (the key positions are the query table interpolated to the key grid, as Qwen-VL
does). Parameter names follow Qwen-VL (``query``, ``kv_proj``, ``attn``, ``ln_q``,
``ln_kv``, ``pos_embed``) so Qwen-VL and SEED-X checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grid_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens do not form a square grid")
    return side


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2))
    angles = positions.reshape(-1, 1).float() * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, side: int) -> torch.Tensor:
    """[side*side, dim]: first half encodes the column, second half the row (Qwen-VL's layout)."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    coords = torch.arange(side, dtype=torch.float32)
    cols, rows = torch.meshgrid(coords, coords, indexing="xy")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def resize_positions(table: torch.Tensor, tokens: int) -> torch.Tensor:
    """A square position table [L, C] resized (bicubic) to ``tokens`` positions."""
    source, target = grid_side(table.shape[0]), grid_side(tokens)
    if source == target:
        return table
    grid = table.float().reshape(1, source, source, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


class Resampler(nn.Module):
    """[B, L, kv_dim] -> [B, num_queries, embed_dim]; ``L`` must be a square number."""

    def __init__(self, num_queries: int, embed_dim: int, heads: int, kv_dim: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.kv_dim = kv_dim
        self.register_buffer("pos_embed", sincos_2d(embed_dim, grid_side(num_queries)))
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.query, std=0.02)
        if isinstance(self.kv_proj, nn.Linear):
            nn.init.trunc_normal_(self.kv_proj.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.kv_dim:
            raise ValueError(f"expected [batch, tokens, {self.kv_dim}], got {list(tokens.shape)}")
        values = self.ln_kv(self.kv_proj(tokens))
        # The position buffers stay float32 under mixed precision (DeepSpeed casts parameters only).
        key_positions = resize_positions(self.pos_embed, tokens.shape[1]).to(values.dtype)
        queries = (self.ln_q(self.query) + self.pos_embed.to(self.query.dtype)).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(queries, values + key_positions, values, need_weights=False)
        return out
