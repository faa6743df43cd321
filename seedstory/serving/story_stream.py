"""One story through the two deployments, as the event lines the client reads.

The writer's segment stream is consumed as it comes: each segment's text goes out at once and its
features go to the painter without waiting, so the text of segment i+1 is written (and sent)
while picture i is painted. Pictures go out as they finish. A painter replica that dies takes
no picture with it (the picture is asked of another replica); a writer that dies ends the story
with an ``error`` event. A client that goes away cancels the writer's stream and every painting.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from seedstory.generation.storybook import Storybook, save_storybook
from seedstory.serving.api import event_line, png_base64

logger = logging.getLogger("ray.serve")

REPLICA_LOST = (RayActorError, ActorUnavailableError)
# Long enough for Serve's routers to learn a replica is gone, so the retry goes elsewhere.
RETRY_BACKOFF_S = 1.0


@dataclass
class StoryRecord:
    """What the client has been sent, kept to save the finished story."""

    id: str
    opening: str
    opening_image: Image.Image | None
    header: dict[str, Any]
    texts: dict[int, str] = field(default_factory=dict)
    pngs: dict[int, bytes] = field(default_factory=dict)
    painted_by: dict[int, dict[str, Any]] = field(default_factory=dict)  # the de-tokenizer of each picture
    stats: dict[str, Any] = field(default_factory=dict)

    def painters(self) -> list[dict[str, Any]]:
        """The de-tokenizers that painted the pictures, in order of first use (more than one across a re-deploy)."""
        painters = [self.painted_by[i] for i in sorted(self.painted_by)]
        return [info for n, info in enumerate(painters) if info not in painters[:n]]

    def models(self) -> dict[str, Any]:
        """The models the story was made with: the writer's, and the de-tokenizer(s) that painted its pictures
        (the one announced when it began is what one painter replica held then)."""
        painters = self.painters()
        models = dict(self.header["models"])
        if painters:
            models["detokenizer"] = painters[0] if len(painters) == 1 else painters
        return models

    def save(self, outcome: str, folder: str) -> str:
        """The finished story as a storybook folder (``seedstory.generation.storybook``); returns ``folder``."""
        indices = sorted(self.texts)
        mixed = len(self.painters()) > 1
        book = Storybook(
            opening=self.opening, opening_image=self.opening_image,
            texts=[self.texts[i] for i in indices],
            images=[Image.open(io.BytesIO(self.pngs[i])) for i in indices],
            outcome=outcome, models=self.models(), config=self.header["config"], stats=dict(self.stats),
            painted_by=[self.painted_by[i] for i in indices] if mixed else None)
        save_storybook(book, folder)
        return folder


class StoryStream:
    def __init__(self, record: StoryRecord, writer: DeploymentResponseGenerator, painter: DeploymentHandle,
                 retries: int, folder: str) -> None:
        self.record = record
        self.writer = writer
        self.painter = painter
        self.retries = retries
        self.folder = folder

    async def events(self) -> AsyncIterator[bytes]:
        began = time.perf_counter()
        record, stats = self.record, self.record.stats
        seed = record.header["seed"]
        yield event_line({"type": "story", "id": record.id, "models": record.header["models"]})
        next_segment: asyncio.Future | None = asyncio.ensure_future(anext(self.writer))
        paintings: set[asyncio.Task] = set()
        end: dict[str, Any] = {}
        paint_s = 0.0
        try:
            while next_segment is not None or paintings:
                waiting = {next_segment, *paintings} - {None}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if next_segment in done:
                    try:
                        event = next_segment.result()
                    except StopAsyncIteration:
                        next_segment = None
                    else:
                        if event["type"] == "segment":
                            index = event["index"]
                            record.texts[index] = event["text"]
                            stats.setdefault("time_to_first_text_s", time.perf_counter() - began)
                            yield event_line({"type": "text", "index": index, "text": event["text"]})
                            paintings.add(asyncio.ensure_future(self._paint(event["features"], seed, index)))
                        else:
                            end = event
                        next_segment = asyncio.ensure_future(anext(self.writer))
                for painting in done & paintings:
                    paintings.discard(painting)
                    index, painted = painting.result()
                    record.pngs[index], record.painted_by[index] = painted["png"], painted["detokenizer"]
                    paint_s += painted["paint_s"]
                    stats.setdefault("time_to_first_image_s", time.perf_counter() - began)
                    yield event_line({"type": "image", "index": index, "png": png_base64(painted["png"])})
            if not end:
                raise RuntimeError("the writer's stream ended without its end event")
        except Exception as err:  # the writer or painter failed: the client hears why, the story stops
            logger.warning("story %s failed: %r", record.id, err)
            yield event_line({"type": "error", "message": failure_message(err)})
            return
        finally:
            self._stop(next_segment, paintings)
        write_s = end["write_s"]
        wall_s = time.perf_counter() - began
        stats.update(segments=len(record.texts), batch=end["batch"], write_s=write_s, paint_s=paint_s, wall_s=wall_s,
                     wall_over_slower=wall_s / max(write_s, paint_s, 1e-9))
        try:
            stats["saved"] = await asyncio.to_thread(record.save, end["outcome"], self.folder)
        except Exception as err:  # the story was delivered; saving it is what failed
            logger.warning("story %s not saved to %s: %r", record.id, self.folder, err)
            yield event_line({"type": "error", "message": f"saving the story to {self.folder} failed: {err}"})
            return
        yield event_line({"type": "done", "outcome": end["outcome"], "stats": stats})

    async def _paint(self, features: Any, seed: int, index: int) -> tuple[int, dict[str, Any]]:
        attempt = 0
        while True:
            try:
                return index, await self.painter.paint.remote(features, seed, index)
            except REPLICA_LOST as err:
                if attempt == self.retries:
                    raise
                attempt += 1
                logger.warning("painter replica lost painting %s/%d (%r); asking another", self.record.id, index, err)
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)

    def _stop(self, next_segment: asyncio.Future | None, paintings: set[asyncio.Task]) -> None:
        """Cancel whatever is still running: the writer's stream and any painting (a no-op when all is done)."""
        if next_segment is not None:
            next_segment.cancel()
        self.writer.cancel()
        for painting in paintings:
            painting.cancel()


def failure_message(err: BaseException) -> str:
    """The first line of a (possibly remote) error: what the client can act on, without the traceback."""
    if isinstance(err, REPLICA_LOST):
        return f"a replica serving this story was lost ({type(err).__name__}); the story stopped, try again"
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
