"""The writer deployment: the MLLM and the story loop, streaming each segment as soon as it is written.

A story's state (its sink cache, its sampler) lives in the call that writes it, never on the
replica, so a replica writes up to ``max_ongoing_requests`` stories at once; each segment is
computed on a worker thread (torch releases the GIL), which keeps the replica's event loop free
to accept, stream and cancel. A story keeps the models it started with when a re-deploy swaps
them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from PIL import Image
from ray import serve

from seedstory.generation.pipeline import StoryWriter, load_writer, story_settings
from seedstory.serving.selection import ModelSelection

logger = logging.getLogger("ray.serve")


@serve.deployment(name="writer")
class Writer:
    def __init__(self) -> None:
        self._writer: StoryWriter | None = None
        self._models: dict[str, Any] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        selection = ModelSelection.model_validate(user_config)
        config = selection.load()
        source = selection.resolve(config)["mllm"]
        if self._writer is not None and self._models["mllm"]["uri"] == source.uri:
            self._writer = StoryWriter(self._writer.mllm, self._writer.tokenizer, self._writer.vit, config)
        else:
            self._writer = StoryWriter(*load_writer(source.uri), config)
        self._models = {"mllm": asdict(source)}
        logger.info("writer serves %s (version %s)", source.reference, source.version)

    def models(self) -> dict[str, Any]:
        return self._models

    async def write(self, story_id: str, text: str, image: Image.Image | None, segments: int, seed: int | None
                    ) -> AsyncIterator[dict[str, Any]]:
        """``story`` (once the opening is accepted), one ``segment`` per segment, then ``end``."""
        writer, models = self._writer, self._models
        settings = writer.settings(segments, seed)
        start = await asyncio.to_thread(writer.opening, text, image)
        yield {"type": "story", "models": models, "seed": settings.seed,
               "config": story_settings(writer.config, settings)}
        loop, written = writer.write(start, settings)
        write_s, count = 0.0, 0
        try:
            while True:
                began = asyncio.get_running_loop().time()
                segment = await asyncio.to_thread(next, written, None)
                write_s += asyncio.get_running_loop().time() - began
                if segment is None:
                    break
                count += 1
                yield {"type": "segment", "index": segment.index, "text": segment.text,
                       "features": segment.features, "stats": asdict(segment.stats)}
        except (asyncio.CancelledError, GeneratorExit):
            logger.info("story %s cancelled after %d of %d segments", story_id, count, settings.segments)
            raise
        yield {"type": "end", "outcome": loop.outcome.value, "write_s": write_s}
