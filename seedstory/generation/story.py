"""The interleaved story loop: text until BOI, an image's features, the features back in as context.

Per segment: sample text tokens (one forward each) until the model emits BOI; run BOI + the N
image-query embeddings as a *preview* forward (it attends to the cache but leaves it untouched)
and regress the hidden states at the N query positions to ViT-shaped features; yield the segment;
then commit BOI + ``embed_image(features)`` + EOI + the segment separator (``[INST]``) to the
cache, so the next segment sees the image exactly as training shows a context image. The painted
picture is never re-encoded, so painting (the caller's, from the yielded features) is off the
critical path.

``context: recompute-window`` reproduces the public reference instead: every segment re-encodes
BOS + the last K segments from scratch into a fresh dense cache, and the image-query tokens take one
forward each (the reference generates them through ``generate`` with a logits processor forcing
them). Both are what the cache saves; ``context_s`` and ``image_s`` in each segment's stats say how
much of the time each took.

A segment that reaches ``max_text_tokens`` without BOI either gets BOI forced
(``on_text_budget: force-image``, flagged in its stats) or ends the story with the outcome
``text-budget-exhausted``; EOS in the text ends it with ``eos``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import torch

from seedstory.config.generation import AttentionSinkConfig, StoryConfig
from seedstory.generation.sampling import TokenSampler
from seedstory.generation.sink_cache import SinkCache


class ImageTokens(Protocol):
    boi: int
    eoi: int
    image: tuple[int, ...]


class StoryModel(Protocol):
    """What the loop needs from the MLLM (``seedstory.models.mllm.SeedStoryMLLM`` provides it)."""

    layout: ImageTokens
    llm: Any

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor: ...
    def embed_image(self, features: torch.Tensor) -> torch.Tensor: ...
    def image_query_embeds(self) -> torch.Tensor: ...
    def regress(self, hidden: torch.Tensor) -> torch.Tensor: ...
    def step(self, inputs_embeds: torch.Tensor, cache: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


class Outcome(str, Enum):
    COMPLETED = "completed"
    EOS = "eos"
    TEXT_BUDGET_EXHAUSTED = "text-budget-exhausted"


@dataclass
class SegmentStats:
    wall_s: float
    text_tokens: int
    decode_s: float
    context_s: float  # putting earlier segments into the cache: the last image block, or the whole window
    image_s: float  # the image-query forwards that produce the features
    kv_bytes: int  # every tensor the cache allocated: the memory it costs
    kv_held_bytes: int  # the keys and values attention reads
    held_tokens: int
    forced_image: bool

    @property
    def token_latency_s(self) -> float:
        """Mean wall time of one single-token decode forward in this segment."""
        return self.decode_s / self.text_tokens if self.text_tokens else float("nan")


@dataclass
class Segment:
    index: int
    text_ids: list[int]
    features: torch.Tensor
    stats: SegmentStats


@dataclass
class StoryStart:
    """The prompt: ``token_ids`` (BOS first, then the opening caption) and optionally the opening image's features.

    ``recompute-window`` keeps ``token_ids[0]`` (BOS) and re-encodes the opening caption and image
    like any other segment once they fall inside the window.
    """

    token_ids: list[int]
    image_features: torch.Tensor | None = None


@dataclass
class Story:
    """Iterate it for segments; ``outcome`` says why it stopped once the iteration ends."""

    segments: Iterator[Segment]
    outcome: Outcome | None = None

    def __iter__(self) -> Iterator[Segment]:
        return self.segments


def token_embeds(model: StoryModel, ids: Sequence[int]) -> torch.Tensor:
    """[1, len(ids), D]."""
    return model.embed_tokens(torch.tensor([list(ids)], device=model.llm.device))


def image_block(model: StoryModel, features: torch.Tensor, separator_ids: Sequence[int]) -> torch.Tensor:
    """[1, N + 2 + len(separator), D]: BOI, the context image's N embeddings, EOI, separator."""
    boi = token_embeds(model, [model.layout.boi])
    parts = [boi, model.embed_image(features[None]).to(boi.dtype), token_embeds(model, [model.layout.eoi])]
    if separator_ids:
        parts.append(token_embeds(model, separator_ids))
    return torch.cat(parts, dim=1)


def image_queries(model: StoryModel) -> torch.Tensor:
    """[1, N + 1, D]: BOI and the N learned image queries, whose last hidden states regress the image."""
    boi = token_embeds(model, [model.layout.boi])
    return torch.cat([boi, model.image_query_embeds()[None].to(boi.dtype)], dim=1)


class _Stop(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class StoryGenerator:
    """Generates stories with one model; every story's state (its cache, its sampler's RNG) lives in
    the iterator ``generate`` returns, so stories can be advanced interleaved in one process."""

    def __init__(self, model: StoryModel, story: StoryConfig, cache: AttentionSinkConfig, *,
                 eos_id: int, separator_ids: Sequence[int] = ()) -> None:
        self.model = model
        self.config = story
        self.cache_config = cache
        self.eos_id = eos_id
        self.separator_ids = list(separator_ids)

    def generate(self, start: StoryStart) -> Story:
        story = Story(segments=iter(()))
        story.segments = self._run(start, story)
        return story

    @property
    def _device(self) -> torch.device:
        return self.model.llm.device

    def _append(self, cache: SinkCache, embeds: torch.Tensor, image_at: int | None = None) -> torch.Tensor:
        """Commit ``embeds`` to the cache (declaring an image whose BOI is ``image_at`` into it); last logits."""
        if image_at is not None:
            boi = cache.seen_tokens + image_at
            cache.add_image(boi, boi + len(self.model.layout.image) + 1)
        logits, _ = self.model.step(embeds, cache, logits_to_keep=1)
        return logits[0, -1]

    def _prefill(self, cache: SinkCache, head: list[int], entries: Sequence[tuple[list[int], torch.Tensor]],
                 tail: list[int]) -> torch.Tensor:
        """``head`` ids, each (text, image) entry, then ``tail`` ids; returns the logits after the last token."""
        logits = self._append(cache, token_embeds(self.model, head))
        for text, features in entries:
            if text:
                logits = self._append(cache, token_embeds(self.model, text))
            logits = self._append(cache, image_block(self.model, features, self.separator_ids), image_at=0)
        if tail:
            logits = self._append(cache, token_embeds(self.model, tail))
        return logits

    def _text(self, cache: SinkCache, logits: torch.Tensor, sampler: TokenSampler
              ) -> tuple[list[int], float, bool]:
        """Decode until BOI; returns (text ids, decode seconds, BOI was forced): one forward per text token."""
        ids: list[int] = []
        decode_s = 0.0
        while True:
            token = sampler(logits)
            if token == self.model.layout.boi:
                return ids, decode_s, False
            if token == self.eos_id:
                raise _Stop(Outcome.EOS)
            began = time.perf_counter()
            logits = self._append(cache, token_embeds(self.model, [token]))
            decode_s += time.perf_counter() - began
            ids.append(token)
            if len(ids) >= self.config.max_text_tokens:
                if self.config.on_text_budget == "stop":
                    raise _Stop(Outcome.TEXT_BUDGET_EXHAUSTED)
                return ids, decode_s, True

    def _image(self, cache: SinkCache, token_by_token: bool) -> torch.Tensor:
        """Features [Nv, Dv] of the image the model is about to draw.

        BOI + the N queries go in as one preview forward, which leaves the cache unchanged (the next
        segment's context is the image block instead). ``token_by_token`` is the reference's way: one
        committed forward per token, into a cache the next segment rebuilds anyway; causal attention
        makes the hidden states the same.
        """
        embeds = image_queries(self.model)
        if token_by_token:
            hidden = torch.cat([self.model.step(embeds[:, i : i + 1], cache, logits_to_keep=1)[1]
                                for i in range(embeds.shape[1])], dim=1)
        else:
            with cache.preview():
                _, hidden = self.model.step(embeds, cache, logits_to_keep=1)
        return self.model.regress(hidden[:, 1:])[0]

    @torch.no_grad()
    def _run(self, start: StoryStart, story: Story) -> Iterator[Segment]:
        if not start.token_ids:
            raise ValueError("a story start needs at least the BOS token")
        sampler = TokenSampler(self.config, device=self._device)
        recompute = self.config.context == "recompute-window"
        dense = AttentionSinkConfig(mode="dense")
        history: list[tuple[list[int], torch.Tensor]] = []
        lead: list[int] = list(start.token_ids[1:])
        if start.image_features is not None:
            history.append((lead, start.image_features))
            lead = []
        began = time.perf_counter()
        cache = SinkCache(dense if recompute else self.cache_config, self.model.llm.config)
        if not recompute:
            logits = self._prefill(cache, list(start.token_ids), [([], f) for _, f in history], [])
        context_s = time.perf_counter() - began
        try:
            for index in range(self.config.segments):
                if recompute:
                    cache = SinkCache(dense, self.model.llm.config)
                    window = history[-self.config.recompute_segments:]
                    logits = self._prefill(cache, list(start.token_ids[:1]), window, lead)
                    context_s = time.perf_counter() - began
                text, decode_s, forced = self._text(cache, logits, sampler)
                image_began = time.perf_counter()
                features = self._image(cache, token_by_token=recompute)
                image_s = time.perf_counter() - image_began
                segment = Segment(
                    index=index, text_ids=text, features=features,
                    stats=SegmentStats(
                        wall_s=time.perf_counter() - began, text_tokens=len(text),
                        decode_s=decode_s, context_s=context_s, image_s=image_s,
                        kv_bytes=cache.tensor_bytes(), kv_held_bytes=cache.held_bytes(),
                        held_tokens=len(cache.kept_positions()),
                        forced_image=forced,
                    ),
                )
                history.append((lead + text, features))
                lead = []
                yield segment
                began = time.perf_counter()
                if not recompute:
                    logits = self._append(cache, image_block(self.model, features, self.separator_ids), image_at=0)
                    context_s = time.perf_counter() - began
        except _Stop as stop:
            story.outcome = stop.outcome
            return
        story.outcome = Outcome.COMPLETED
