"""Moving RoPE-rotated keys to other positions without recomputing them.

RoPE rotates each frequency pair of a key by ``position * inv_freq``; rotations compose, so a key
rotated at ``p`` becomes the key rotated at ``p + delta`` by one more rotation of ``delta``. That only
holds while ``inv_freq`` does not depend on the sequence length, hence the allow-list below.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, rotate_half

STATIC_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})


def static_inv_freq(config: PreTrainedConfig) -> torch.Tensor:
    """The model's RoPE inverse frequencies, refusing RoPE variants whose frequencies change with length."""
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(
            f"key re-rotation needs length-independent RoPE frequencies; rope_type {rope_type!r} is not one of "
            f"{sorted(STATIC_ROPE_TYPES)}"
        )
    return LlamaRotaryEmbedding(config).inv_freq.detach().to(torch.float32).clone()


def rotation(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape ``[len(delta), head_dim]`` for rotating keys by ``delta`` positions (float32)."""
    freqs = delta.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rerotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``keys`` ``[batch, heads, n, head_dim]`` by per-token angles; computed in float32, one rounding."""
    k = keys.to(torch.float32)
    return (k * cos + rotate_half(k) * sin).to(keys.dtype)
