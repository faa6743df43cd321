"""The story pipeline from registered models: loading by alias, the opening, painting off the loop."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import PeftModel

from seedstory.data.pixels import vit_pixels
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.render import render_frame
from seedstory.generation.pipeline import (
    StoryInputError, StoryModels, StoryPipeline, StoryWriter, model_references, resolve_models,
)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def pipeline(story_models) -> StoryPipeline:
    config = story_models.config
    return StoryPipeline(StoryModels.load(resolve_models(config, model_references(config, "candidate"))), config)


def opening(config):
    story = toy_story(config.data.toy, 0)
    return story.record.captions[0], render_frame(story.states[0], config.data.toy.image_size)


def test_models_load_by_alias_and_report_the_registered_versions(pipeline, story_models):
    versions = pipeline.models.versions()
    assert {part: versions[part]["version"] for part in versions} == story_models.versions
    assert versions["mllm"]["reference"].endswith("@candidate") and versions["mllm"]["uri"].startswith("s3://")
    assert not isinstance(pipeline.models.mllm.llm, PeftModel), "the LoRA adapter is merged for generation"


def test_opening_image_goes_through_the_vit_like_a_training_frame(pipeline, story_models):
    text, image = opening(story_models.config)
    start = pipeline.opening(text, image)
    tokenizer = pipeline.models.tokenizer
    assert start.token_ids == [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]
    expected = pipeline.models.vit(torch.from_numpy(vit_pixels(image, pipeline.models.vit.config.image_size))[None])
    assert torch.equal(start.image_features, expected[0].detach())
    assert pipeline.opening(text, None).image_features is None


def test_a_story_has_its_segments_text_and_one_picture_each(pipeline, story_models):
    text, image = opening(story_models.config)
    story = pipeline.write(text, image, segments=3, seed=5).wait()
    assert story.outcome.value == "completed" and [s.index for s in story.segments] == [0, 1, 2]
    images = story.images()
    size = story_models.config.model.sd_image_size
    assert all(picture.size == (size, size) and picture.mode == "RGB" for picture in images)
    assert all(isinstance(s.text, str) and s.stats.text_tokens <= 6 for s in story.segments)
    again = pipeline.write(text, image, segments=3, seed=5).wait()
    assert [s.text for s in again.segments] == [s.text for s in story.segments]
    assert [p.tobytes() for p in again.images()] == [p.tobytes() for p in images], "seeded painting repeats"
    timings = story.timings
    assert timings.wall_s > 0 and timings.write_s > 0 and timings.paint_s > 0

    stopped = pipeline.write(text, image, segments=3, seed=5)
    first = next(iter(stopped))
    assert first.index == 0 and stopped.outcome is None
    with pytest.raises(RuntimeError, match="iterated once"):
        iter(stopped)
    assert [s.text for s in stopped.wait().segments] == [s.text for s in story.segments]  # the rest, written
    assert stopped.outcome.value == "completed"


def test_the_writer_s_batch_engine_writes_what_the_one_story_loop_writes(pipeline, story_models):
    writer = pipeline.writer
    text, image = opening(story_models.config)
    settings = writer.settings(3, 5)
    start = writer.opening(text, image)
    _, alone = writer.write(start, settings)
    alone = list(alone)
    engine = writer.engine(max_stories=2)
    batched = engine.submit(start, settings)
    engine.submit(writer.opening("Another opening.", None), writer.settings(2, 6))
    engine.run()
    assert [writer.text(s.text_ids) for s in batched.segments] == [s.text for s in alone]
    for mine, theirs in zip(batched.segments, alone, strict=True):
        torch.testing.assert_close(mine.features, theirs.features, rtol=0, atol=1e-5)
    config = story_models.config
    recompute = config.model_copy(update={"story": config.story.model_copy(update={"context": "recompute-window"})})
    with pytest.raises(ValueError, match="story.context=cache"):
        StoryWriter(writer.mllm, writer.tokenizer, writer.vit, recompute).engine(2)


def test_the_story_loop_never_waits_for_a_picture(pipeline, story_models):
    """With the painter held, every segment's text still arrives: painting is off the critical path."""
    release = threading.Event()
    detokenizer = pipeline.models.detokenizer
    paint = detokenizer.decode

    def held(*args, **kwargs):
        assert release.wait(timeout=60), "the test never released the painter"
        return paint(*args, **kwargs)

    detokenizer.decode = held
    try:
        story = iter(pipeline.write(*opening(story_models.config), segments=4))
        written = [next(story) for _ in range(4)]
        assert not any(segment.image.done() for segment in written)
    finally:
        release.set()
        del detokenizer.decode
    assert next(story, None) is None
    assert all(segment.image.result().size == (64, 64) for segment in written)


@pytest.mark.parametrize("text, segments, problem", [("", 2, "text: empty"), ("   ", 2, "text: empty"),
                                                     ("Tom is here.", 0, "segments: must be at least 1")])
def test_bad_requests_name_the_problem(pipeline, text, segments, problem):
    with pytest.raises(StoryInputError, match=problem):
        pipeline.write(text, None, segments=segments)
