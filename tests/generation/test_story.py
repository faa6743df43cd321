"""The story loop on the tiny SEED-Story MLLM (random weights)."""

from __future__ import annotations

import pytest
import torch

from seedstory.config import load_config
from seedstory.config.generation import AttentionSinkConfig, StoryConfig
from seedstory.generation.story import Outcome, StoryGenerator, StoryStart
from seedstory.models.mllm import build_mllm

EOS = 2
SEPARATOR = [7]


def tiny_mllm(seed: int = 0):
    torch.manual_seed(seed)
    return build_mllm(load_config("tiny").model).eval()


@pytest.fixture(scope="module")
def mllm():
    return tiny_mllm()


@pytest.fixture(scope="module")
def mute_mllm():
    """Final norm zeroed: every logit is 0, so greedy decoding emits token 0 forever (never BOI)."""
    model = tiny_mllm()
    with torch.no_grad():
        model.llm.model.norm.weight.zero_()
    return model


def start(model, seed: int = 0) -> StoryStart:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(model.output_resampler.num_queries, model.output_resampler.embed_dim, generator=generator)
    return StoryStart(token_ids=[1, 40 + seed, 41 + seed], image_features=features)


def generator(model, cache: AttentionSinkConfig | None = None, **story) -> StoryGenerator:
    config = StoryConfig(**{"segments": 4, "max_text_tokens": 6, "on_text_budget": "force-image", **story})
    return StoryGenerator(model, config, cache or AttentionSinkConfig(window=48, boi_after=2, eoi_before=3),
                          eos_id=EOS, separator_ids=SEPARATOR)


def test_loop_yields_segments_with_text_and_features(mllm):
    story = generator(mllm).generate(start(mllm))
    segments = list(story)
    assert story.outcome is Outcome.COMPLETED and [s.index for s in segments] == [0, 1, 2, 3]
    shape = (mllm.output_resampler.num_queries, mllm.output_resampler.embed_dim)
    for segment in segments:
        assert segment.text_ids and len(segment.text_ids) <= 6
        assert segment.features.shape == shape and torch.isfinite(segment.features).all()
        assert segment.stats.kv_bytes > 0
    held = [s.stats.held_tokens for s in segments]
    assert max(held) <= 4 + 48 + 8 * (8 + 4)


def test_a_model_that_never_emits_boi_stops_with_a_named_outcome(mute_mllm):
    story = generator(mute_mllm, on_text_budget="stop").generate(start(mute_mllm))
    assert list(story) == [] and story.outcome is Outcome.TEXT_BUDGET_EXHAUSTED


def test_forcing_boi_keeps_a_mute_model_going_and_says_so(mute_mllm):
    story = generator(mute_mllm, segments=3).generate(start(mute_mllm))
    segments = list(story)
    assert story.outcome is Outcome.COMPLETED and len(segments) == 3
    assert all(s.stats.forced_image and s.text_ids == [0] * 6 for s in segments)


def test_eos_ends_the_story(mute_mllm):
    loop = generator(mute_mllm)
    loop.eos_id = 0
    story = loop.generate(start(mute_mllm))
    assert list(story) == [] and story.outcome is Outcome.EOS


def test_two_interleaved_stories_equal_the_same_stories_one_after_the_other(mllm):
    def make(seed: int):
        return generator(mllm, sampling="sample", temperature=0.8, top_k=20, seed=seed).generate(start(mllm, seed))

    sequential = [list(make(0)), list(make(1))]
    first, second = iter(make(0)), iter(make(1))
    interleaved: list[list] = [[], []]
    for _ in range(4):
        interleaved[0].append(next(first))
        interleaved[1].append(next(second))
    for alone, together in zip(sequential, interleaved):
        assert [s.text_ids for s in alone] == [s.text_ids for s in together]
        assert all(torch.equal(a.features, b.features) for a, b in zip(alone, together))


def test_cached_context_equals_recomputing_the_whole_story(mllm):
    """Features go back in through the input resampler: a cache that keeps everything must see the same
    context as the reference behaviour of re-encoding every earlier segment (and drawing the image one
    query token per forward must give the same features as the one-forward preview)."""
    cached = list(generator(mllm, cache=AttentionSinkConfig(mode="dense")).generate(start(mllm)))
    recomputed = list(generator(mllm, context="recompute-window", recompute_segments=10).generate(start(mllm)))
    assert [s.text_ids for s in cached] == [s.text_ids for s in recomputed]
    for a, b in zip(cached, recomputed):
        torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=1e-4)


def test_recompute_window_bounds_its_context(mllm):
    story = generator(mllm, segments=5, context="recompute-window", recompute_segments=2).generate(start(mllm))
    segments = list(story)
    assert story.outcome is Outcome.COMPLETED and len(segments) == 5
    per_segment = 6 + 18 + len(SEPARATOR)  # text + image block + separator, at most
    drawing = 1 + 16  # BOI + the queries, committed one forward each as the reference does
    assert all(s.stats.held_tokens <= 1 + 2 * per_segment + 6 + drawing for s in segments)
    assert all(s.stats.context_s > 0 and s.stats.image_s > 0 for s in segments)
