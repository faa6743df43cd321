import math

import pytest
import torch

from seedstory.models.resampler import Resampler, resize_positions, sincos_2d


def qwen_sincos(dim: int, side: int) -> torch.Tensor:
    """Qwen-VL's numpy formula, transcribed: columns first, then rows; sin then cos within each."""
    rows = []
    for y in range(side):
        for x in range(side):
            parts = []
            for value in (x, y):
                omega = [1.0 / 10000 ** (i / (dim / 4)) for i in range(dim // 4)]
                parts += [math.sin(value * w) for w in omega] + [math.cos(value * w) for w in omega]
            rows.append(parts)
    return torch.tensor(rows)


def test_sincos_matches_qwen_layout():
    torch.testing.assert_close(sincos_2d(8, 3), qwen_sincos(8, 3), rtol=0, atol=1e-6)


def test_resampler_shapes_and_key_grid_resizing():
    resampler = Resampler(num_queries=4, embed_dim=16, heads=2, kv_dim=24)
    out = resampler(torch.randn(3, 9, 24))
    assert out.shape == (3, 4, 16)
    assert resize_positions(resampler.pos_embed, 9).shape == (9, 16)
    assert {"query", "pos_embed", "kv_proj.weight", "attn.in_proj_weight", "ln_q.weight", "ln_kv.weight"} <= set(
        resampler.state_dict())


def test_resampler_rejects_wrong_inputs():
    resampler = Resampler(num_queries=4, embed_dim=16, heads=2, kv_dim=16)
    with pytest.raises(ValueError, match=r"expected \[batch, tokens, 16\]"):
        resampler(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="square grid"):
        resampler(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="square grid"):
        Resampler(num_queries=6, embed_dim=16, heads=2, kv_dim=16)
