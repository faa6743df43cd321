"""The writer deployment: the MLLM and the story engine, streaming each segment as soon as it is written.

The stories in flight on a replica are written together, continuously batched by a ``StoryEngine``
(one cache row each, ``serve.writer.max_stories`` rows) that one thread steps while there is work;
torch releases the GIL, so the replica's event loop stays free to accept, stream and cancel. A
request submits its story, then relays the segments the engine hands to it. A re-deploy starts a new
engine with the new models; the old one finishes the stories it holds and its thread ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image
from ray import serve

from seedstory.generation.pipeline import StoryInputError, StoryWriter, load_writer, story_settings
from seedstory.generation.story import Segment
from seedstory.generation.story_engine import EngineStory, StoryEngine
from seedstory.serving.selection import ModelSelection, replica_device

logger = logging.getLogger("ray.serve")


class EngineClosed(RuntimeError):
    """A story reached an engine that a re-deploy closed; the replica's current one takes it."""


class EngineThread:
    """Steps one engine on its own thread whenever it has stories; ``close`` lets it finish them and end."""

    def __init__(self, engine: StoryEngine, name: str) -> None:
        self.engine = engine
        self._work = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, *args: Any, **kwargs: Any) -> EngineStory:
        """Queue a story; refused once closed (the thread may already have ended: nobody would step it)."""
        with self._work:
            if self._closed:
                raise EngineClosed("this story engine was closed by a re-deploy")
            story = self.engine.submit(*args, **kwargs)
            self._work.notify()
        return story

    def cancel(self, story: EngineStory) -> None:
        self.engine.cancel(story)
        with self._work:
            self._work.notify()

    def close(self) -> None:
        with self._work:
            self._closed = True
            self._work.notify()

    def _run(self) -> None:
        while True:
            with self._work:
                self._work.wait_for(lambda: self._closed or not self.engine.idle)
                if self._closed and self.engine.idle:
                    return
            try:
                self.engine.step()
            except Exception:  # the engine ended every story it held with the error; the thread lives on
                logger.exception("a story engine step failed")


@dataclass(frozen=True)
class Serving:
    """What a replica writes with, replaced whole by a re-deploy: a story reads all of it from one."""

    writer: StoryWriter
    engine: EngineThread
    models: dict[str, Any]


@serve.deployment(name="writer")
class Writer:
    def __init__(self) -> None:
        self._serving: Serving | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls it on a worker thread, while stories are opened on the event loop: the new models
        are published before the old engine closes, so a story that reads the old one finds the new."""
        selection = ModelSelection.model_validate(user_config)
        config = selection.load()
        source = selection.resolve(config)["mllm"]
        old = self._serving
        if old is not None and old.models["mllm"]["uri"] == source.uri:
            writer = StoryWriter(old.writer.mllm, old.writer.tokenizer, old.writer.vit, config)
        else:
            writer = StoryWriter(*load_writer(source.uri, replica_device("writer")), config)
        engine = EngineThread(writer.engine(config.serve.writer.batch), name=f"story-engine-{source.version}")
        self._serving = Serving(writer, engine, {"mllm": asdict(source)})
        if old is not None:
            old.engine.close()
        logger.info("writer serves %s (version %s), %d stories per batch", source.reference, source.version,
                    config.serve.writer.batch)

    def models(self) -> dict[str, Any]:
        return self._serving.models

    async def write(self, story_id: str, text: str, image: Image.Image | None, segments: int, seed: int | None
                    ) -> AsyncIterator[dict[str, Any]]:
        """``story`` (once the opening is accepted), one ``segment`` per segment, then ``end``."""
        loop = asyncio.get_running_loop()
        written: asyncio.Queue[Segment | None] = asyncio.Queue()
        while True:
            serving = self._serving
            writer, engine, models = serving.writer, serving.engine, serving.models
            settings = writer.settings(segments, seed)
            start = await asyncio.to_thread(writer.opening, text, image)
            try:
                story = engine.submit(start, settings, listener=lambda _, segment: loop.call_soon_threadsafe(
                    written.put_nowait, segment))
            except EngineClosed:  # a re-deploy replaced the models meanwhile: open the story with the new ones
                continue
            except ValueError as err:  # e.g. a dense story longer than its row: the request, not the replica, is wrong
                raise StoryInputError(f"segments: {err}") from None
            break
        write_s = 0.0
        try:
            yield {"type": "story", "models": models, "seed": settings.seed,
                   "config": story_settings(writer.config, settings)}
            while True:
                began = loop.time()
                segment = await written.get()
                write_s += loop.time() - began
                if segment is None:
                    break
                yield {"type": "segment", "index": segment.index, "text": writer.text(segment.text_ids),
                       "features": segment.features.cpu(), "stats": asdict(segment.stats)}
        except (asyncio.CancelledError, GeneratorExit):
            logger.info("story %s cancelled after %d of %d segments", story_id, len(story.segments), settings.segments)
            raise
        finally:
            if not story.done:  # the client left, or relaying failed: free the row for the next story
                engine.cancel(story)
        if story.error is not None:
            raise RuntimeError(f"story {story_id}: {story.error}")
        yield {"type": "end", "outcome": story.outcome.value, "write_s": write_s, "batch": story.peak_batch}
