"""The painter deployment: the adapted de-tokenizer, batching feature tensors from every story in flight.

Each picture keeps its own noise (``painting_generator`` of its story's seed and its index), so a batch
paints the same pictures as one call per picture, and as ``seedstory generate`` does. The
sampling loop runs on a worker thread so the replica keeps collecting the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from ray import serve

from seedstory.config.model import SchedulerConfig
from seedstory.generation.pipeline import paint, painting_generator, to_image
from seedstory.generation.storybook import png_bytes
from seedstory.models.detokenizer import Detokenizer
from seedstory.models.export import load_detokenizer
from seedstory.serving.selection import ModelSelection, replica_device

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Painting:
    """What a replica paints with, replaced whole by a re-deploy: a batch reads all of it from one."""

    detokenizer: Detokenizer
    scheduler: SchedulerConfig
    models: dict[str, Any]


@serve.deployment(name="painter")
class Painter:
    def __init__(self) -> None:
        self._painting: Painting | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        selection = ModelSelection.model_validate(user_config)
        config = selection.load()
        self.paint.set_max_batch_size(config.serve.painter.max_batch_size)
        self.paint.set_batch_wait_timeout_s(config.serve.painter.batch_wait_timeout_s)
        source = selection.resolve(config)["detokenizer"]
        old = self._painting
        if old is not None and old.models["detokenizer"]["uri"] == source.uri:
            detokenizer = old.detokenizer
        else:
            detokenizer = load_detokenizer(source.uri).to(replica_device("painter")).eval()
        self._painting = Painting(detokenizer, config.model.scheduler, {"detokenizer": asdict(source)})
        logger.info("painter serves %s (version %s)", source.reference, source.version)

    def models(self) -> dict[str, Any]:
        return self._painting.models

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def paint(self, features: list[torch.Tensor], seeds: list[int], indices: list[int]
                    ) -> list[dict[str, Any]]:
        """One PNG per request, with the seconds its share of the batch took and the de-tokenizer that painted it
        (a re-deploy can change it between two pictures of one story)."""
        painting = self._painting
        began = time.perf_counter()
        pngs = await asyncio.to_thread(self._paint, painting.detokenizer, painting.scheduler, features, seeds, indices)
        share = (time.perf_counter() - began) / len(pngs)
        painted_by = painting.models["detokenizer"]
        return [{"png": png, "paint_s": share, "detokenizer": painted_by} for png in pngs]

    @staticmethod
    @torch.no_grad()
    def _paint(detokenizer: Detokenizer, scheduler: SchedulerConfig, features: list[torch.Tensor], seeds: list[int],
               indices: list[int]) -> list[bytes]:
        generators = [painting_generator(seed, index) for seed, index in zip(seeds, indices)]
        device = next(detokenizer.parameters()).device
        pixels = paint(detokenizer, torch.stack(features).to(device), generators, scheduler)
        return [png_bytes(to_image(image)) for image in pixels]
