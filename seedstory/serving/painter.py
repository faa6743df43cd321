"""The painter deployment: the adapted de-tokenizer, batching feature tensors from every story in flight.

Each picture keeps its own noise (``painting_generator`` of its story's seed and its index), so a batch
paints the same pictures as one call per picture, and as ``seedstory generate`` does. The
sampling loop runs on a worker thread so the replica keeps collecting the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
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


@serve.deployment(name="painter")
class Painter:
    def __init__(self) -> None:
        self._detokenizer: Detokenizer | None = None
        self._scheduler: SchedulerConfig | None = None
        self._models: dict[str, Any] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        selection = ModelSelection.model_validate(user_config)
        config = selection.load()
        self.paint.set_max_batch_size(config.serve.painter.max_batch_size)
        self.paint.set_batch_wait_timeout_s(config.serve.painter.batch_wait_timeout_s)
        self._scheduler = config.model.scheduler
        source = selection.resolve(config)["detokenizer"]
        if self._detokenizer is None or self._models["detokenizer"]["uri"] != source.uri:
            self._detokenizer = load_detokenizer(source.uri).to(replica_device("painter")).eval()
        self._models = {"detokenizer": asdict(source)}
        logger.info("painter serves %s (version %s)", source.reference, source.version)

    def models(self) -> dict[str, Any]:
        return self._models

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def paint(self, features: list[torch.Tensor], seeds: list[int], indices: list[int]
                    ) -> list[dict[str, Any]]:
        """One PNG per request, with the seconds its share of the batch took."""
        began = time.perf_counter()
        pngs = await asyncio.to_thread(self._paint, self._detokenizer, self._scheduler, features, seeds, indices)
        share = (time.perf_counter() - began) / len(pngs)
        return [{"png": png, "paint_s": share} for png in pngs]

    @staticmethod
    @torch.no_grad()
    def _paint(detokenizer: Detokenizer, scheduler: SchedulerConfig, features: list[torch.Tensor], seeds: list[int],
               indices: list[int]) -> list[bytes]:
        generators = [painting_generator(seed, index) for seed, index in zip(seeds, indices)]
        device = next(detokenizer.parameters()).device
        pixels = paint(detokenizer, torch.stack(features).to(device), generators, scheduler)
        return [png_bytes(to_image(image)) for image in pixels]
