"""Many stories per model: continuous batching of the story loop under the multimodal attention sink.

Each story is the story loop written as a program (``_program``) that asks for forwards of its own
tokens and gets back logits or hidden states; the engine runs the forwards of many stories together,
one ``BatchSinkCache`` row each. ``StoryGenerator``, the one-story loop, is the reference it is tested
against: a story written in a batch is the story written alone. A story keeps its own kept set, slot
table, positions, anchors and sampler, so what it writes does not depend on what shares the batch.

Scheduling, one ``step``: stories waiting for a row take the free ones (first come, first served);
then every story's next forward runs, all of them in one packed forward (``BatchSinkCache.begin``):

- every story decoding text adds one token. Decoding reads every weight to make one token per story,
  so it is bound by memory bandwidth and a batch of B costs little more than a batch of one;
- every story in a chunk (a prompt piece, an image block, the image-query preview) adds the chunk's
  tokens to the same forward, so they ride on the weights the decoding rows read anyway instead of
  reading them again in a forward of their own (on a GPU, instead of launching every kernel again).
  Attention is per group of rows with one chunk length; previews all have N + 1 tokens and image
  blocks N + 2 + separator tokens, so nothing is padded. Prompts are cut into pieces of at most
  ``prompt_chunk`` tokens, so a long prompt never stalls the others' decoding for more than one
  piece. A prompt longer than the cache's window goes in whole, as the one-story loop puts it: in
  pieces, its later tokens would not see the evicted ones.

A step's forward is as slow as the work it carries: a decoding story waits, for its next token, for
the chunks of the stories that share its step, which is the latency a batch costs (measured in
``jobs/bench_batching.py``). A story that finished its image block this step decodes in the next one.

Admission is exact: a bounded mode's row holds its kept set whatever the story's length; a dense row
holds ``cache.dense_capacity`` tokens and a story whose longest possible length exceeds it is refused
at submission. Stories leave when they finish or are cancelled, freeing their row for the next.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import torch

from seedstory.config.generation import AttentionSinkConfig, StoryConfig
from seedstory.generation.batch_cache import BatchSinkCache, packed_attention
from seedstory.generation.sampling import TokenSampler
from seedstory.generation.story import (
    Outcome, Segment, SegmentStats, StoryModel, StoryStart, image_block, image_queries, token_embeds,
)

logger = logging.getLogger(__name__)


DECODE = (1, True, False)  # the group of a text token's forward: one token, committed, logits


@dataclass
class Forward:
    """What a story asks of the engine: run ``embeds`` [q, D]; get the last logits [V] or hidden states [q, D]."""

    embeds: torch.Tensor
    commit: bool = True
    image_at: int | None = None  # offset in ``embeds`` of the BOI of an image to declare to the cache
    hidden: bool = False

    @property
    def group(self) -> tuple[int, bool, bool]:
        return self.embeds.shape[0], self.commit, self.hidden


@dataclass
class ForwardTally:
    """What one kind of forward (decode or chunk) has cost so far."""

    forwards: int = 0
    stories: int = 0  # summed over forwards: a forward's occupancy is stories / forwards
    decoding: int = 0  # of those, stories that decoded a text token
    tokens: int = 0  # summed over forwards: the tokens they carried, dummy rows' included
    dummy_rows: int = 0  # rows carried without a token of theirs (see BatchSinkCache)
    seconds: float = 0.0
    kv_bytes: int = 0  # summed over forwards: keys and values the decoding stories held, the least they must read


@dataclass(eq=False)
class EngineStory:
    """A story in the engine: ``segments`` grow as it writes; ``done`` once it finished or was cancelled."""

    id: int
    start: StoryStart
    settings: StoryConfig
    listener: Callable[[EngineStory, Segment | None], None] | None = None
    row: int | None = None
    segments: list[Segment] = field(default_factory=list)
    outcome: Outcome | None = None
    cancelled: bool = False
    error: str | None = None  # why the engine ended it: a failed forward, or its own program failed
    peak_batch: int = 0  # the most stories one of its forwards served
    token_times: list[list[float]] = field(default_factory=list)  # per segment: when each text token was chosen
    submitted_at: float = field(default_factory=time.perf_counter)
    finished_at: float | None = None
    _program: Generator[Forward, tuple[torch.Tensor, float], None] | None = None
    _pending: Forward | None = None

    @property
    def done(self) -> bool:
        return self.finished_at is not None


class StoryEngine:
    """Advances up to ``max_stories`` stories together; call ``step``, ``run`` and ``abort`` from one thread.

    ``submit`` and ``cancel`` may be called from any thread; they take effect at the next step. A
    failed forward ends every story in the engine with its error (``abort``) and is raised: after it,
    no row can be trusted. A story whose own program fails ends alone with its error; a listener that
    fails is logged and ends nothing. ``decode_whole_rows`` is ``BatchSinkCache``'s.
    """

    def __init__(self, model: StoryModel, cache: AttentionSinkConfig, *, max_stories: int, eos_id: int,
                 separator_ids: Sequence[int] = (), prompt_chunk: int = 64,
                 decode_whole_rows: bool | None = None) -> None:
        if max_stories < 1 or prompt_chunk < 1:
            raise ValueError(f"max_stories and prompt_chunk must be at least 1, got {max_stories}, {prompt_chunk}")
        self.model = model
        self.cache_config = cache
        self.eos_id = eos_id
        self.separator_ids = list(separator_ids)
        self.prompt_chunk = prompt_chunk
        dtype = next(model.llm.parameters()).dtype
        self.cache = BatchSinkCache(cache, model.llm.config, max_stories, dtype=dtype, device=model.llm.device,
                                    decode_whole_rows=decode_whole_rows)
        self.rows: list[EngineStory | None] = [None] * max_stories
        self._waiting: deque[EngineStory] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.steps = 0
        self.decodes = ForwardTally()  # forwards of text tokens only (one-token prompt pieces included)
        self.chunks = ForwardTally()  # forwards that carried a chunk, beside any text tokens

    @property
    def max_stories(self) -> int:
        return len(self.rows)

    @property
    def forwards(self) -> int:
        return self.decodes.forwards + self.chunks.forwards

    @property
    def active(self) -> list[EngineStory]:
        return [story for story in self.rows if story is not None]

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self.active

    def image_block_tokens(self) -> int:
        return len(self.model.layout.image) + 2 + len(self.separator_ids)

    def longest(self, start: StoryStart, settings: StoryConfig) -> int:
        """The most tokens ``start`` continued by ``settings`` can put in the cache."""
        block = self.image_block_tokens()
        opening = len(start.token_ids) + (block if start.image_features is not None else 0)
        return opening + settings.segments * (settings.max_text_tokens + block)

    def submit(self, start: StoryStart, settings: StoryConfig,
               listener: Callable[[EngineStory, Segment | None], None] | None = None) -> EngineStory:
        """Queue a story; ``listener(story, segment)`` hears each segment, then ``(story, None)`` at the end."""
        if not start.token_ids:
            raise ValueError("a story start needs at least the BOS token")
        if settings.context != "cache":
            raise ValueError(f"the story engine keeps each story's context in its cache; context "
                             f"{settings.context!r} re-encodes it every segment and runs only one story at a time")
        if self.cache_config.mode == "dense" and self.longest(start, settings) > self.cache.capacity:
            raise ValueError(f"a dense story of {settings.segments} segments may reach {self.longest(start, settings)} "
                             f"tokens, more than cache.dense_capacity ({self.cache.capacity})")
        story = EngineStory(id=next(self._ids), start=start, settings=settings, listener=listener)
        with self._lock:
            self._waiting.append(story)
        return story

    def cancel(self, story: EngineStory) -> None:
        """Stop ``story`` at the next step and free its row (its listener hears the end)."""
        story.cancelled = True

    def abort(self, error: BaseException) -> None:
        """End every story, active or waiting, with ``error``: after a failed forward no row can be trusted."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for story in [*self.active, *waiting]:
            story.error = f"{type(error).__name__}: {error}"
        self._leave(self.active)
        for story in waiting:
            self._finish(story)

    def run(self) -> None:
        """Step until every submitted story is done."""
        while not self.idle:
            self.step()

    @torch.no_grad()
    def step(self) -> None:
        self._leave([s for s in self.active if s.cancelled])
        self._admit()
        groups: dict[tuple[int, bool, bool], list[EngineStory]] = {}
        for story in self.active:
            groups.setdefault(story._pending.group, []).append(story)
        if groups:
            try:
                self._forward(list(groups.values()))
            except Exception as err:
                self.abort(err)
                raise
        self.steps += 1

    def _admit(self) -> None:
        with self._lock:
            cancelled = [story for story in self._waiting if story.cancelled]
            self._waiting = deque(story for story in self._waiting if not story.cancelled)
            admitted = []
            for row, holder in enumerate(self.rows):
                if holder is None and self._waiting:
                    admitted.append((row, self._waiting.popleft()))
        for story in cancelled:
            self._finish(story)
        for row, story in admitted:
            story.row = row
            self.rows[row] = story
            self.cache.open(row)
            story._program = self._program(story)
            self._advance(story, None)

    def _forward(self, groups: list[list[EngineStory]]) -> None:
        """One packed forward: every story's pending tokens, a group per forward shape."""
        for group in groups:
            group.sort(key=lambda story: story.row)
        stories = [story for group in groups for story in group]
        for story in stories:
            image_at = story._pending.image_at
            if image_at is not None:
                boi = self.cache.seen(story.row) + image_at
                self.cache.add_image(story.row, boi, boi + len(self.model.layout.image) + 1)
        decoding = [story for story in stories if story._pending.group == DECODE]
        kv_bytes = sum(self.cache.held_bytes(story.row) for story in decoding)
        began = time.perf_counter()
        forward = self.cache.begin([([story.row for story in group], len(group[0]._pending.embeds),
                                     group[0]._pending.commit) for group in groups])
        embeds = stories[0]._pending.embeds.new_zeros(1, forward.tokens, stories[0]._pending.embeds.shape[-1])
        starts = []
        for group, planned in zip(groups, forward.groups):
            for story in group:
                starts.append(planned.start(story.row))
                embeds[0, starts[-1] : starts[-1] + planned.q] = story._pending.embeds
        last = torch.tensor([at + len(story._pending.embeds) - 1 for at, story in zip(starts, stories)],
                            device=embeds.device)
        with packed_attention(self.model.llm.config, forward):
            logits, hidden = self.model.step(embeds, self.cache, position_ids=forward.positions,
                                             logits_to_keep=last, batch_forward=forward)
        if logits.device.type != "cpu":  # an accelerator runs asynchronously: time the forward, not its launch
            torch.accelerator.synchronize(logits.device)
        seconds = time.perf_counter() - began
        tally = self.decodes if len(decoding) == len(stories) else self.chunks
        tally.forwards += 1
        tally.stories += len(stories)
        tally.decoding += len(decoding)
        tally.tokens += forward.tokens
        tally.dummy_rows += sum(len(planned.covered) - len(planned.rows) for planned in forward.groups)
        tally.seconds += seconds
        tally.kv_bytes += kv_bytes
        for i, (at, story) in enumerate(zip(starts, stories)):
            story.peak_batch = max(story.peak_batch, len(stories))
            pending = story._pending
            result = hidden[0, at : at + len(pending.embeds)] if pending.hidden else logits[0, i]
            self._advance(story, (result, seconds))

    def _advance(self, story: EngineStory, result: tuple[torch.Tensor, float] | None) -> None:
        """Hand ``story`` its forward's result and take its next forward; it leaves when it ends or fails."""
        try:
            story._pending = story._program.send(result)
        except StopIteration:
            self._leave([story])
        except Exception as err:
            logger.exception("story %d failed", story.id)
            story.error = f"{type(err).__name__}: {err}"
            self._leave([story])

    def _leave(self, stories: list[EngineStory]) -> None:
        for story in stories:
            self.cache.close(story.row)
            self.rows[story.row] = None
            if story._program is not None:
                story._program.close()
            self._finish(story)

    def _finish(self, story: EngineStory) -> None:
        story.finished_at = time.perf_counter()
        story._pending = None
        self._tell(story, None)

    def _tell(self, story: EngineStory, segment: Segment | None) -> None:
        """The story's listener hears ``segment`` (None: the end); its failure is logged, never the engine's."""
        if story.listener is None:
            return
        try:
            story.listener(story, segment)
        except Exception:
            logger.exception("the listener of story %d failed", story.id)

    def _program(self, story: EngineStory) -> Generator[Forward, tuple[torch.Tensor, float], None]:
        """The story loop of ``StoryGenerator`` (context in the cache), one forward at a time."""
        start, settings = story.start, story.settings
        sampler = TokenSampler(settings, device=self.model.llm.device)
        began = time.perf_counter()
        context_s = 0.0
        prompt = token_embeds(self.model, start.token_ids)[0]
        whole = self.cache_config.mode != "dense" and len(prompt) > self.cache_config.window
        for piece in prompt.split(len(prompt) if whole else self.prompt_chunk):
            logits, seconds = yield Forward(piece)
            context_s += seconds
        if start.image_features is not None:
            logits, seconds = yield Forward(image_block(self.model, start.image_features, self.separator_ids)[0],
                                            image_at=0)
            context_s += seconds
        for index in range(settings.segments):
            text: list[int] = []
            times: list[float] = []
            story.token_times.append(times)
            decode_s, forced = 0.0, False
            while True:
                token = sampler(logits)
                times.append(time.perf_counter())
                if token == self.model.layout.boi:
                    break
                if token == self.eos_id:
                    story.outcome = Outcome.EOS
                    return
                logits, seconds = yield Forward(token_embeds(self.model, [token])[0])
                decode_s += seconds
                text.append(token)
                if len(text) >= settings.max_text_tokens:
                    if settings.on_text_budget == "stop":
                        story.outcome = Outcome.TEXT_BUDGET_EXHAUSTED
                        return
                    forced = True
                    break
            hidden, image_s = yield Forward(image_queries(self.model)[0], commit=False, hidden=True)
            segment = Segment(
                index=index, text_ids=text, features=self.model.regress(hidden[None, 1:])[0],
                stats=SegmentStats(
                    wall_s=time.perf_counter() - began, text_tokens=len(text),
                    decode_s=decode_s, context_s=context_s, image_s=image_s,
                    kv_bytes=self.cache.row_bytes(), kv_held_bytes=self.cache.held_bytes(story.row),
                    held_tokens=self.cache.table(story.row).stored, forced_image=forced,
                ),
            )
            story.segments.append(segment)
            self._tell(story, segment)
            if index + 1 == settings.segments:
                break
            began = time.perf_counter()
            logits, context_s = yield Forward(image_block(self.model, segment.features, self.separator_ids)[0],
                                              image_at=0)
        story.outcome = Outcome.COMPLETED
