"""The packed forward's attention switch: it names the model's own attention and always gives it back."""

from __future__ import annotations

import pytest
import torch

from seedstory.generation.batch_cache import BATCH_ATTENTION, BatchForward, batch_attention, packed_attention

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
