"""The sink cache inside a real (tiny, random) LLaMA: equivalences with dense attention and 4D masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from seedstory.config.generation import AttentionSinkConfig
from seedstory.generation.retention import ImageSpan, RetentionPolicy
from seedstory.generation.rope import rerotate, rotation, static_inv_freq
from seedstory.generation.sink_cache import SinkCache, image_spans

MODES = ["dense", "window", "sink", "mm-sink"]
POSITIONS = ["absolute", "rerotate"]
IMAGE = 8  # BOI + 6 image tokens + EOI


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def eager() -> LlamaForCausalLM:
    return tiny_llama("eager")


@pytest.fixture(scope="module")
def sdpa() -> LlamaForCausalLM:
    return tiny_llama("sdpa")


def stream(model, cache, ids: torch.Tensor, chunks: list[int], images=()) -> torch.Tensor:
    for boi, eoi in images:
        cache.add_image(boi, eoi)
    logits, start = [], 0
    with torch.no_grad():
        for q in chunks:
            logits.append(model(ids[:, start:start + q], past_key_values=cache, use_cache=True).logits)
            start += q
    return torch.cat(logits, dim=1)


CHUNKS = [7, 1, 1, IMAGE, 1, 1, 12, 1, IMAGE, 1, 1, 1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("positions", POSITIONS)
def test_window_covering_the_sequence_gives_dense_logits(eager, sdpa, mode, positions):
    ids = torch.randint(0, 97, (1, sum(CHUNKS)))
    images = [(10, 17), (32, 39)]
    config = AttentionSinkConfig(mode=mode, window=sum(CHUNKS), positions=positions)
    for model in (eager, sdpa):
        dense = stream(model, DynamicCache(config=model.config), ids, CHUNKS)
        ours = stream(model, SinkCache(config, model.config), ids, CHUNKS, images)
        if model is eager:
            assert torch.equal(ours, dense)
        else:
            torch.testing.assert_close(ours, dense, atol=1e-6, rtol=1e-6)


def reference_mask(config: AttentionSinkConfig, chunks: list[int], images) -> torch.Tensor:
    """Query i of a chunk starting at n sees kept(n + q) below n, and its chunk causally."""
    policy = RetentionPolicy(config)
    for span in images:
        policy.add_image(ImageSpan(*span))
    total = sum(chunks)
    visible = torch.zeros(total, total, dtype=torch.bool)
    n = 0
    for q in chunks:
        old = [p for p in policy.kept_positions(n + q).tolist() if p < n]
        for i in range(n, n + q):
            visible[i, old] = True
            visible[i, n:i + 1] = True
        n += q
    return visible


@pytest.mark.parametrize("mode", ["window", "sink", "mm-sink"])
def test_streaming_decode_equals_one_forward_with_the_equivalent_4d_mask(eager, mode):
    chunks = [30, 1, 1, IMAGE, 1, 1, 1, IMAGE, 1, 1, 1, 1, 1, IMAGE, 9] + [1] * 12  # prefill > window
    images = [(32, 39), (43, 50), (55, 62)]
    config = AttentionSinkConfig(mode=mode, sink_tokens=3, window=10, boi_after=2, eoi_before=2,
                                 max_anchored_images=2)
    ids = torch.randint(0, 97, (1, sum(chunks)))
    streamed = stream(eager, SinkCache(config, eager.config), ids, chunks, images)
    visible = reference_mask(config, chunks, images)
    additive = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        one_pass = eager(ids, attention_mask=additive[None, None]).logits
    torch.testing.assert_close(streamed, one_pass, atol=2e-6, rtol=1e-5)


def test_rerotated_keys_equal_keys_rotated_at_the_new_positions(eager):
    inv_freq = static_inv_freq(eager.config)
    keys = torch.randn(1, 2, 5, 16)
    old, new = torch.tensor([0, 3, 7, 100, 4000]), torch.tensor([0, 1, 2, 3, 4])
    rotary = eager.model.rotary_emb
    cos_old, sin_old = rotary(keys, old[None])
    cos_new, sin_new = rotary(keys, new[None])
    _, at_old = apply_rotary_pos_emb(keys, keys, cos_old, sin_old)
    _, at_new = apply_rotary_pos_emb(keys, keys, cos_new, sin_new)
    cos, sin = rotation(new - old, inv_freq)
    torch.testing.assert_close(rerotate(at_old, cos, sin), at_new, atol=2e-5, rtol=1e-5)


def test_cache_holds_keys_rotated_at_their_in_cache_positions(eager):
    """Layer-0 keys depend on nothing but the tokens: the re-rotating cache must hold exactly the
    absolute cache's keys moved from their position to ``seen - held + rank``."""
    config = AttentionSinkConfig(mode="mm-sink", sink_tokens=3, window=10, boi_after=2, eoi_before=2)
    chunks = [20, 1, IMAGE, 1, 1, IMAGE] + [1] * 15
    images = [(21, 28), (31, 38)]
    ids = torch.randint(0, 97, (1, sum(chunks)))
    absolute = SinkCache(config, eager.config)
    moved = SinkCache(config.model_copy(update={"positions": "rerotate"}), eager.config)
    stream(eager, absolute, ids, chunks, images)
    stream(eager, moved, ids, chunks, images)
    positions = absolute.kept_positions()
    assert np.array_equal(positions, moved.kept_positions())
    effective = moved.effective_positions()
    seen = absolute.seen_tokens  # after a single-token step the held keys are packed just below it
    assert effective.tolist() == list(range(seen - len(positions), seen))
    assert not np.array_equal(effective, positions)

    def by_position(cache):
        table, layer = cache.table, cache.layers[0]
        order = np.argsort(table.pos[: table.stored])
        return layer.keys[:, :, torch.as_tensor(order)]

    cos, sin = rotation(torch.as_tensor(effective - positions), static_inv_freq(eager.config))
    torch.testing.assert_close(by_position(moved), rerotate(by_position(absolute), cos, sin), atol=2e-5, rtol=1e-5)


def direct_step(cache: SinkCache, q: int, layers: int = 2) -> tuple[torch.Tensor, ...]:
    """Drive the Cache API the way LLaMA does (mask sizes first, then every layer's update)."""
    cache.get_mask_sizes(q, 0)
    returned = ()
    for layer in range(layers):
        returned = cache.update(torch.randn(1, 2, q, 16), torch.randn(1, 2, q, 16), layer)
    return returned


@pytest.mark.parametrize("positions", POSITIONS)
def test_memory_is_constant_once_full_and_decode_writes_in_place(eager, positions):
    window = 16
    config = AttentionSinkConfig(mode="mm-sink", sink_tokens=4, window=window, boi_after=2, eoi_before=2,
                                 max_anchored_images=2, positions=positions)
    cache = SinkCache(config, eager.config)
    direct_step(cache, 5)
    sizes, pointers, held = set(), set(), []
    for step in range(10 * window):
        if step % 20 == 0:
            cache.add_image(cache.seen_tokens, cache.seen_tokens + IMAGE - 1)
            direct_step(cache, IMAGE)
        keys, values = direct_step(cache, 1)
        buffer = cache.layers[1].keys
        assert keys.data_ptr() == buffer.data_ptr()  # attention reads the buffer itself: no copy
        sizes.add(cache.tensor_bytes())
        pointers.add(buffer.data_ptr())
        held.append(len(cache.kept_positions()))
    assert len(sizes) == 1 and len(pointers) == 1
    assert max(held) <= RetentionPolicy(config).capacity()
    assert held[-20:] == held[-40:-20] == held[-60:-40]  # one image per 20 tokens: a steady cycle, no growth


def test_dense_mode_grows_by_doubling_not_per_token(eager):
    cache = SinkCache(AttentionSinkConfig(mode="dense"), eager.config)
    allocations = set()
    for _ in range(600):
        direct_step(cache, 1)
        allocations.add(cache.tensor_bytes())
    assert len(allocations) <= 3  # 256 -> 512 -> 1024 slots
    assert cache.held_bytes() == 600 * 2 * (2 * 2 * 16 * 4)


def test_preview_attends_but_stores_nothing(eager):
    config = AttentionSinkConfig(mode="sink", sink_tokens=2, window=6, positions="rerotate")
    ids = torch.randint(0, 97, (1, 30))
    cache, twin = SinkCache(config, eager.config), SinkCache(config, eager.config)
    stream(eager, cache, ids, [20, 1, 1])
    stream(eager, twin, ids, [20, 1, 1])
    with torch.no_grad(), cache.preview():
        eager(ids[:, 22:30], past_key_values=cache, use_cache=True)
    assert cache.seen_tokens == 22 and np.array_equal(cache.kept_positions(), twin.kept_positions())
    torch.testing.assert_close(stream(eager, cache, ids[:, 22:], [1, 1]), stream(eager, twin, ids[:, 22:], [1, 1]))


def test_generate_drives_the_cache(eager):
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        dense = eager.generate(ids, max_new_tokens=20, do_sample=False, past_key_values=DynamicCache())
        wide = eager.generate(ids, max_new_tokens=20, do_sample=False,
                              past_key_values=SinkCache(AttentionSinkConfig(mode="sink", window=64), eager.config))
        narrow_cache = SinkCache(AttentionSinkConfig(mode="sink", sink_tokens=2, window=8), eager.config)
        eager.generate(ids, max_new_tokens=20, do_sample=False, past_key_values=narrow_cache)
    assert torch.equal(dense, wide)
    assert narrow_cache.seen_tokens == 31 and len(narrow_cache.kept_positions()) == 10


def test_image_spans_and_declaration_errors(eager):
    assert image_spans([1, 5, 9, 9, 6, 2, 5, 9, 6], boi_id=5, eoi_id=6, offset=100) == [(101, 104), (106, 108)]
    with pytest.raises(ValueError, match="not closed"):
        image_spans([5, 9], boi_id=5, eoi_id=6)
    cache = SinkCache(AttentionSinkConfig(), eager.config)
    direct_step(cache, 4)
    with pytest.raises(ValueError, match="before appending"):
        cache.add_image(2, 9)
