"""The packed forward's attention: the switch names the model's own attention and always gives it back;
a CPU's decoding attention over whole rows is the model's attention over each row's valid slots."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from seedstory.config.generation import AttentionSinkConfig
from seedstory.generation.batch_cache import (
    BATCH_ATTENTION, BatchForward, BatchSinkCache, batch_attention, decode_attention, packed_attention,
)

from .test_story import tiny_mllm


def test_the_switch_restores_the_models_attention_even_when_the_forward_fails():
    config = tiny_mllm().llm.config
    config._attn_implementation = "eager"
    forward = BatchForward(groups=[], positions=torch.zeros(1, 0, dtype=torch.long), masks=[])
    with pytest.raises(ValueError, match="boom"), packed_attention(config, forward):
        assert config._attn_implementation == BATCH_ATTENTION
        raise ValueError("boom")
    assert config._attn_implementation == "eager" and forward.attention == "eager"


def test_a_packed_forward_outside_the_switch_is_refused():
    forward = BatchForward(groups=[], positions=torch.zeros(1, 0, dtype=torch.long), masks=[])
    query = torch.zeros(1, 2, 0, 4)
    with pytest.raises(RuntimeError, match="packed_attention"):
        batch_attention(torch.nn.Module(), query, query, query, None, batch_forward=forward)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_decode_attention_is_eager_attention_over_each_rows_valid_slots(dtype, atol):
    """Grouped-query heads (8 over 2 key-value heads) and rows of 20, 7 and 1 valid slots in rows of 20."""
    generator = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, slots, dim = 3, 8, 2, 20, 16
    keys, values = (torch.randn(rows, kv_heads, slots, dim, generator=generator).to(dtype) for _ in range(2))
    query = torch.randn(rows, heads, 1, dim, generator=generator).to(dtype)
    lengths = [20, 7, 1]
    mask = torch.full((rows, 1, 1, slots), torch.finfo(dtype).min, dtype=dtype)
    for row, length in enumerate(lengths):
        mask[row, ..., :length] = 0
    out = decode_attention(query, keys, values, mask, scaling=dim**-0.5)
    model = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    for row, length in enumerate(lengths):
        expected, _ = eager_attention_forward(model, query[row : row + 1], keys[row : row + 1, :, :length],
                                              values[row : row + 1, :, :length], None, scaling=dim**-0.5)
        torch.testing.assert_close(out[row : row + 1], expected, rtol=0, atol=atol)


def test_decoding_reads_whole_rows_by_default_only_on_a_cpu_in_bf16():
    config = tiny_mllm().llm.config
    chosen = {dtype: BatchSinkCache(AttentionSinkConfig(window=8), config, 1, dtype=dtype).decode_whole_rows
              for dtype in (torch.float32, torch.bfloat16)}
    assert chosen == {torch.float32: False, torch.bfloat16: True}
    assert not BatchSinkCache(AttentionSinkConfig(window=8), config, 1, dtype=torch.bfloat16,
                              decode_whole_rows=False).decode_whole_rows
