"""Continuous batching: stories in a batch equal the same stories alone; rows are reused; admission is exact."""

from __future__ import annotations

import threading

import pytest
import torch

from seedstory.config.generation import AttentionSinkConfig, StoryConfig
from seedstory.generation.story import Outcome, StoryGenerator, StoryStart
from seedstory.generation.story_engine import StoryEngine

from .test_story import EOS, SEPARATOR, tiny_mllm

# Small enough that every story evicts and anchors images (about 25 tokens per segment).
CACHES = {
    "mm-sink": AttentionSinkConfig(window=48, boi_after=2, eoi_before=3),
    "mm-sink/rerotate": AttentionSinkConfig(window=48, boi_after=2, eoi_before=3, positions="rerotate"),
    "dense": AttentionSinkConfig(mode="dense", dense_capacity=400),
}
STORIES = 8


def start(model, seed: int) -> StoryStart:
    """Openings of different lengths; every third one without an image."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(model.output_resampler.num_queries, model.output_resampler.embed_dim, generator=generator)
    return StoryStart(token_ids=[1, *range(40 + seed, 43 + 2 * seed)], image_features=features if seed % 3 else None)


def settings(kind: int, **story) -> StoryConfig:
    """Stories of 3 to 6 segments with 4 to 8 text tokens each (BOI forced), so phases drift apart."""
    return StoryConfig(**{"segments": 3 + kind % 4, "max_text_tokens": 4 + kind % 5,
                          "on_text_budget": "force-image", **story})


def engine(model, cache: AttentionSinkConfig, max_stories: int, prompt_chunk: int = 3,
           decode_whole_rows: bool = False) -> StoryEngine:
    return StoryEngine(model, cache, max_stories=max_stories, eos_id=EOS, separator_ids=SEPARATOR,
                       prompt_chunk=prompt_chunk, decode_whole_rows=decode_whole_rows)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def mllm(request):
    model = tiny_mllm()
    model.llm.config._attn_implementation = request.param
    return model


@pytest.fixture(scope="module", params=list(CACHES))
def alone(request, mllm):
    """Each story written by the one-story loop."""
    cache = CACHES[request.param]
    stories = []
    for seed in range(STORIES):
        loop = StoryGenerator(mllm, settings(seed), cache, eos_id=EOS, separator_ids=SEPARATOR)
        story = loop.generate(start(mllm, seed))
        stories.append((list(story), story.outcome))
    return cache, stories


@pytest.mark.parametrize("decode_whole_rows", [False, True], ids=["longest-prefix", "whole-rows"])
@pytest.mark.parametrize("max_stories", [1, 3, 8])
def test_a_story_in_a_batch_equals_the_story_alone(mllm, alone, max_stories, decode_whole_rows):
    """Greedy, stories arriving at different steps: identical token ids, features within 1e-5 (eager and
    SDPA, decoding through the model's attention or through ``decode_attention`` over whole rows)."""
    cache, expected = alone
    batched = engine(mllm, cache, max_stories, decode_whole_rows=decode_whole_rows)
    stories = []
    for seed in range(STORIES):
        stories.append(batched.submit(start(mllm, seed), settings(seed)))
        for _ in range(seed % 3):
            batched.step()
    batched.run()
    for story, (segments, outcome) in zip(stories, expected):
        assert story.outcome is outcome is Outcome.COMPLETED
        assert [s.text_ids for s in story.segments] == [s.text_ids for s in segments]
        for mine, theirs in zip(story.segments, segments):
            torch.testing.assert_close(mine.features, theirs.features, rtol=0, atol=1e-5)
            assert mine.stats.held_tokens == theirs.stats.held_tokens
    assert batched.forwards <= batched.steps, "a step ran more than one forward"
    assert mllm.llm.config._attn_implementation in ("eager", "sdpa"), "the packed forward kept its attention"
    if max_stories > 1:
        assert batched.chunks.decoding > 0, "no forward carried text tokens beside a chunk: phases never overlapped"
    if max_stories == 8:
        assert batched.chunks.dummy_rows > 0, "no decoding group spanned the row of a story in a chunk"


def test_rows_are_reused_and_memory_stays_fixed_over_100_joins_and_leaves(mllm):
    batched = engine(mllm, CACHES["mm-sink"], max_stories=3)
    buffers = [(t.data_ptr(), t.numel()) for layer in batched.cache.layers for t in (layer.keys, layer.values)]
    allocated = batched.cache.tensor_bytes()
    stories, most_active = [], 0
    for seed in range(100):
        stories.append(batched.submit(start(mllm, seed % 5), settings(seed, segments=1 + seed % 2)))
        batched.step()
        most_active = max(most_active, len(batched.active))
    batched.run()
    assert all(story.outcome is Outcome.COMPLETED for story in stories)
    assert most_active == 3 and {story.row for story in stories} == {0, 1, 2}
    assert [(t.data_ptr(), t.numel()) for layer in batched.cache.layers for t in (layer.keys, layer.values)] == buffers
    assert batched.cache.tensor_bytes() == allocated and batched.cache.tables == [None] * 3


def test_a_row_keeps_nothing_of_its_previous_story(mllm):
    """Even a non-finite value left in a row's buffers, which decoding over whole rows reads (masked)."""
    batched = engine(mllm, CACHES["mm-sink"], max_stories=1, decode_whole_rows=True)
    batched.submit(start(mllm, 1), settings(1))
    batched.run()
    for layer in batched.cache.layers:
        layer.keys.fill_(float("nan"))
        layer.values.fill_(float("nan"))
    story = batched.submit(start(mllm, 2), settings(2))
    batched.run()
    loop = StoryGenerator(mllm, settings(2), CACHES["mm-sink"], eos_id=EOS, separator_ids=SEPARATOR)
    expected = list(loop.generate(start(mllm, 2)))
    assert story.outcome is Outcome.COMPLETED
    assert [s.text_ids for s in story.segments] == [s.text_ids for s in expected]
    for mine, theirs in zip(story.segments, expected):
        torch.testing.assert_close(mine.features, theirs.features, rtol=0, atol=1e-5)


def test_decode_forwards_tally_the_keys_and_values_their_stories_held(mllm):
    """The bandwidth ceiling's floor: a decode forward must read what each of its stories held before it."""
    batched = engine(mllm, CACHES["dense"], max_stories=2, prompt_chunk=64)
    opening = start(mllm, 0)  # no image
    for _ in range(2):
        batched.submit(opening, settings(0, segments=1))
    batched.run()
    config = mllm.llm.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    prompt, text = len(opening.token_ids), settings(0).max_text_tokens
    assert (batched.decodes.forwards, batched.decodes.stories) == (text, 2 * text)
    # Before its k-th text token's forward a story holds its prompt and k earlier text tokens.
    assert batched.decodes.kv_bytes == 2 * per_token * sum(prompt + k for k in range(text))


def test_a_story_that_does_not_fit_waits_for_a_row(mllm):
    batched = engine(mllm, CACHES["mm-sink"], max_stories=2)
    first, second, third = (batched.submit(start(mllm, s), settings(s, segments=1)) for s in (1, 2, 4))
    batched.step()
    assert (first.row, second.row, third.row) == (0, 1, None)
    while not (first.done or second.done):
        batched.step()
        assert third.row is None and len(batched.active) <= 2
    batched.step()
    assert third.row == (0 if first.done else 1)
    batched.run()
    assert third.outcome is Outcome.COMPLETED


def test_sampled_stories_are_reproducible_whatever_shares_the_batch(mllm):
    sampled = {"sampling": "sample", "temperature": 1.5}

    def texts(story):
        return [s.text_ids for s in story.segments]

    alone = engine(mllm, CACHES["mm-sink"], max_stories=1)
    reference = alone.submit(start(mllm, 1), settings(1, seed=11, **sampled))
    other_seed = alone.submit(start(mllm, 1), settings(1, seed=12, **sampled))
    alone.run()
    assert texts(reference) != texts(other_seed)
    crowded = engine(mllm, CACHES["mm-sink"], max_stories=4)
    neighbours = [crowded.submit(start(mllm, s), settings(s, seed=100 + s, **sampled)) for s in (2, 3)]
    same = crowded.submit(start(mllm, 1), settings(1, seed=11, **sampled))
    neighbours.append(crowded.submit(start(mllm, 4), settings(4, seed=104, **sampled)))
    crowded.run()
    assert texts(same) == texts(reference)


def test_a_cancelled_story_frees_its_row_and_its_listener_hears_the_end(mllm):
    heard = []
    batched = engine(mllm, CACHES["mm-sink"], max_stories=1)
    story = batched.submit(start(mllm, 1), settings(1, segments=6),
                           listener=lambda s, segment: heard.append(segment.index if segment else "end"))
    waiting = batched.submit(start(mllm, 2), settings(2, segments=1))
    while not story.segments:
        batched.step()
    batched.cancel(story)
    batched.step()
    assert story.done and story.outcome is None and heard == [0, "end"]
    assert waiting.row == 0
    batched.run()
    assert waiting.outcome is Outcome.COMPLETED


def test_submission_errors_name_the_problem(mllm):
    dense = engine(mllm, AttentionSinkConfig(mode="dense", dense_capacity=100), max_stories=2)
    with pytest.raises(ValueError, match=r"may reach \d+ tokens, more than cache.dense_capacity \(100\)"):
        dense.submit(start(mllm, 1), settings(1, segments=20))
    with pytest.raises(ValueError, match="context 'recompute-window'"):
        dense.submit(start(mllm, 1), settings(1, context="recompute-window"))
    with pytest.raises(ValueError, match="at least the BOS token"):
        dense.submit(StoryStart(token_ids=[]), settings(1))
    assert dense.idle


def test_a_prompt_longer_than_the_window_equals_the_story_alone(mllm):
    """In pieces, its later tokens would miss the evicted ones: the engine puts it in whole, as the loop does."""
    cache = CACHES["mm-sink"]
    long = StoryStart(token_ids=[1, *[40 + i % 30 for i in range(cache.window + 20)]],
                      image_features=start(mllm, 1).image_features)
    alone = list(StoryGenerator(mllm, settings(2), cache, eos_id=EOS, separator_ids=SEPARATOR).generate(long))
    batched = engine(mllm, cache, max_stories=2)
    story = batched.submit(long, settings(2))
    batched.submit(start(mllm, 4), settings(4))
    batched.run()
    assert [s.text_ids for s in story.segments] == [s.text_ids for s in alone]
    for mine, theirs in zip(story.segments, alone, strict=True):
        torch.testing.assert_close(mine.features, theirs.features, rtol=0, atol=1e-5)


def test_a_failing_listener_is_logged_and_stops_no_story(mllm):
    def fail_at_first_segment(story, segment):
        if segment is not None:
            raise OSError("client gone")

    batched = engine(mllm, CACHES["mm-sink"], max_stories=2)
    failing = batched.submit(start(mllm, 1), settings(1), listener=fail_at_first_segment)
    other = batched.submit(start(mllm, 2), settings(2))
    batched.run()
    assert failing.error is None and failing.outcome is Outcome.COMPLETED, "a listener's failure is logged only"
    assert other.outcome is Outcome.COMPLETED


def test_a_failed_forward_ends_every_story_with_its_error(mllm, monkeypatch):
    batched = engine(mllm, CACHES["mm-sink"], max_stories=2)
    stories = [batched.submit(start(mllm, s), settings(s)) for s in (1, 2, 4)]
    batched.step()
    monkeypatch.setattr(mllm, "step", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        batched.step()
    assert all(story.done and story.error == "RuntimeError: device lost" for story in stories)
    assert batched.idle and batched.cache.tables == [None, None]


def test_two_engines_sharing_a_model_in_two_threads_each_write_the_stories_alone(mllm):
    """A re-deployed writer finishes its stories on one engine while the next engine starts on the same model."""
    cache = CACHES["mm-sink"]
    expected = [list(StoryGenerator(mllm, settings(seed), cache, eos_id=EOS, separator_ids=SEPARATOR)
                     .generate(start(mllm, seed))) for seed in range(4)]
    engines = [engine(mllm, cache, max_stories=2) for _ in range(2)]
    stories = [engines[seed % 2].submit(start(mllm, seed), settings(seed)) for seed in range(4)]
    threads = [threading.Thread(target=each.run) for each in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for story, segments in zip(stories, expected):
        assert story.outcome is Outcome.COMPLETED, story.error
        assert [s.text_ids for s in story.segments] == [s.text_ids for s in segments]
        for mine, theirs in zip(story.segments, segments):
            torch.testing.assert_close(mine.features, theirs.features, rtol=0, atol=1e-5)
    assert mllm.llm.config._attn_implementation in ("eager", "sdpa")
