"""The writer deployment's class in this process, on this run's registered tiny models: what a story
sees when Serve re-deploys it (``reconfigure`` runs on a worker thread while stories are opened)."""

from __future__ import annotations

import asyncio

import pytest

from seedstory.serving.writer import EngineClosed, Writer

pytestmark = pytest.mark.stack


@pytest.fixture
def replica(ray_cluster, story_models):
    user_config = {"config": "tiny", "alias": None, "overrides": list(story_models.overrides)}
    writer = Writer.func_or_class()
    writer.reconfigure(user_config)
    yield writer, user_config
    writer._serving.engine.close()


async def events(writer: Writer, segments: int) -> list[dict]:
    return [event async for event in writer.write("s", "A fox finds a key.", None, segments, 3)]


def test_a_story_opened_while_a_redeploy_closes_its_engine_is_written_by_the_new_one(replica):
    writer, user_config = replica
    first = writer._serving
    opening = first.writer.opening

    def opening_during_a_redeploy(text, image):
        writer.reconfigure(user_config)  # on to_thread's worker, as Serve runs it, while this story opens
        return opening(text, image)

    first.writer.opening = opening_during_a_redeploy
    written = asyncio.run(events(writer, 2))
    second = writer._serving
    assert second is not first
    with pytest.raises(EngineClosed):
        first.engine.submit(None, None)
    assert [event["type"] for event in written] == ["story", "segment", "segment", "end"]
    assert written[0]["models"] is second.models
    assert second.engine.engine.steps > 0 and first.engine.engine.steps == 0


def test_a_story_in_flight_when_the_engine_closes_is_finished_by_it(replica):
    writer, user_config = replica

    async def redeploy_after_the_first_segment() -> list[dict]:
        stream = writer.write("s", "A fox finds a key.", None, 3, 3)
        seen = [await anext(stream), await anext(stream)]
        first = writer._serving
        await asyncio.to_thread(writer.reconfigure, user_config)
        seen += [event async for event in stream]
        assert first.engine.engine.idle
        return seen

    written = asyncio.run(redeploy_after_the_first_segment())
    assert [event["type"] for event in written] == ["story", "segment", "segment", "segment", "end"]
    assert written[-1]["outcome"] == "completed"
