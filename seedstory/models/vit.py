"""The visual tokenizer: Qwen-VL's ViT-G (a ViT with an attention pool), written in torch.

Neither transformers nor timm ships Qwen-VL v1's visual tower, so it lives here with
Qwen-VL's module names: a Qwen-VL checkpoint's ``transformer.visual.*`` tensors load into it
once the prefix is stripped (``seedstory.models.weights.load_vit_weights``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seedstory.config.model import ModelConfig, ViTConfig
from seedstory.data.pixels import CLIP_MEAN, CLIP_STD
from seedstory.models.resampler import Resampler, resize_positions
from seedstory.models.weights import load_vit_weights


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> the CLIP-normalised input the ViT was trained on (as ``vit_pixels`` makes it)."""
    mean = torch.as_tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.as_tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


class VisualAttention(nn.Module):
    """Self-attention whose fused ``in_proj`` is laid out per head as [q | k | v] (Qwen-VL's layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        fused = self.in_proj(x).view(batch, length, self.heads, 3 * width // self.heads)
        q, k, v = (t.transpose(1, 2) for t in fused.chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class VisualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerBlock(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(VisualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """[B, 3, S, S] CLIP-normalised pixels (S = ``image_size``) -> [B, num_queries, output_dim]."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(config.position_grid**2, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-6)
        self.transformer = TransformerBlock(width, config.layers, config.heads, config.mlp_ratio)
        self.attn_pool = Resampler(config.num_queries, config.output_dim, config.pool_heads, kv_dim=width)
        self.ln_post = nn.LayerNorm(config.output_dim, eps=1e-6)
        self.proj = nn.Parameter(config.output_dim**-0.5 * torch.randn(config.output_dim, config.output_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"expected pixels [batch, 3, {size}, {size}], got {list(pixels.shape)}")
        x = self.conv1(pixels.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        x = x + resize_positions(self.positional_embedding, x.shape[1])
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(self.attn_pool(x)) @ self.proj


def build_vit(config: ModelConfig, device: str | torch.device = "cpu") -> VisionTransformer:
    """Qwen-VL weights from ``vit.weights`` when set (built on meta, then filled), else random init.

    In eval mode: the ViT is frozen in every stage.
    """
    if config.vit.weights is not None and torch.device(device).type != "meta":
        with torch.device("meta"):
            vit = VisionTransformer(config.vit)
        return load_vit_weights(vit, config.vit.weights, config.dtype).to(device).eval()
    with torch.device(device):
        return VisionTransformer(config.vit).eval()
