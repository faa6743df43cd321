"""Ray Data pipelines: a split's stories -> validated stories -> stage samples.

The split's index (JSONL lines, or a prepared dataset's manifest; ``seedstory.data.story_sets``) is
read on the driver (it is small; the pictures are not) so that every bad record keeps its file and
line. One ``map_batches`` on CPU actors does the costly part in one place: fetch a group of stories,
decode and validate their pictures, and cut the stage's samples from the pictures just decoded
(``StorySamples``; every picture is decoded once per pass). The pool is ``data.decode_concurrency``
actors, or, by default, grows from one actor to its share of the CPUs the stage's training workers
leave free. One ``StoryLedger`` actor per dataset counts good and bad stories across all of them
and stops the pipeline, with an error naming the first bad records, as soon as the failure budget
is exceeded.

Each group of stories is one block and one map batch, in order, so every sample has a fixed
position (pass, group, index): the training streams built on this (``seedstory.data.streams``)
restart from any position without reading what comes before it.

Every Ray Data execution starts its actors afresh, so this module and what it imports stay free of
torch and transformers (a window cut's tokenizer brings transformers along when it arrives): those
imports would cost each actor seconds of the CPUs training runs on. The tensors are made on the
training worker (``seedstory.data.stage_collate``).

Validation data is the val split once, in file order, with the windows of pass 0: the same
samples in the same order at every evaluation. ``validation_set`` materialises it once in the
object store, so evaluations re-read it without decoding and without taking CPUs from training.
"""

from __future__ import annotations

import logging
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import ray

from seedstory.config import SeedStoryConfig
from seedstory.config.data import DataConfig
from seedstory.data.badrecords import BadRecord, BadRecordError, BadRecordLedger, FailureBudgetExceeded
from seedstory.data.pixels import image_bytes
from seedstory.data.samples import WindowSampler, stage1_samples
from seedstory.data.stories import Story
from seedstory.data.story_sets import Split, StorySet, split_stories
from seedstory.data.windows import window_count

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Stage = Literal["detokenizer_pretrain", "story_instruct", "detokenizer_adapt"]
FRAME_COLUMNS = ("vit_pixels", "sd_pixels", "add_time_ids", "key", "frame")
WINDOW_COLUMNS = ("key", "start", "num_images", "input_ids", "labels", "image_mask", "vit_pixels")
POSITION_COLUMNS = ("pass", "group", "index")
ROW_BYTES = 64  # a sample's bound beyond its arrays: key, frame or start, SD time ids, position


class StoryLedger:
    """Counts each (file, line) once however many epochs or retries see it (one actor per dataset)."""

    def __init__(self, total_stories: int, failure_budget: float) -> None:
        self.ledger = BadRecordLedger(total_stories, failure_budget)
        self.seen: set[tuple[str, int]] = set()
        self.dropped_too_long = 0

    def add(self, good: list[tuple[str, int, int]], bad: list[dict], dropped_too_long: int = 0) -> str | None:
        """Returns the budget error message once the budget is exceeded, else None."""
        self.dropped_too_long += dropped_too_long
        for file, line, frames in good:
            if (file, line) not in self.seen:
                self.seen.add((file, line))
                self.ledger.good(frames)
        for record in bad:
            if (record["file"], record["line"]) not in self.seen:
                self.seen.add((record["file"], record["line"]))
                self.ledger.record(BadRecord(**record))
        try:
            self.ledger.check()
        except FailureBudgetExceeded as err:
            return str(err)
        return None

    def snapshot(self) -> tuple[BadRecordLedger, int]:
        return self.ledger, self.dropped_too_long


class DataReport:
    """The driver's view of a pipeline's accounting: log line and MLflow metrics."""

    def __init__(self, ledger: ray.actor.ActorHandle) -> None:
        self.ledger = ledger

    def metrics(self, prefix: str = "data") -> dict[str, float]:
        ledger, dropped = ray.get(self.ledger.snapshot.remote())
        return {**ledger.metrics(prefix), f"{prefix}/windows_too_long": float(dropped)}

    def summary(self) -> dict:
        ledger, dropped = ray.get(self.ledger.snapshot.remote())
        return {**ledger.summary(), "windows_too_long": dropped}

    def log(self) -> str:
        ledger, dropped = ray.get(self.ledger.snapshot.remote())
        line = f"{ledger.log_line()}, {dropped} windows over max_length dropped"
        log.warning(line) if ledger.bad_total or dropped else log.info(line)
        return line


class SampleCut(ABC):
    """How one stage cuts a valid story into samples: rows of ``names``, stacked into arrays when
    every row has the same shapes (``stacked``), kept as lists otherwise."""

    names: tuple[str, ...]
    stacked: bool

    @property
    def dropped_too_long(self) -> int:
        """Samples refused so far for exceeding ``data.max_length``."""
        return 0

    @abstractmethod
    def __call__(self, story: Story, pass_index: int) -> Iterator[dict]:
        """The story's samples for pass ``pass_index``."""


class StageCut(SampleCut):
    """A training stage's cut, which a stream sizes its Ray Data executions by."""

    @abstractmethod
    def sample_count(self, frames: int) -> int:
        """The samples a valid story of ``frames`` frames yields in any pass (over-long windows aside)."""

    @abstractmethod
    def story_bytes(self, frames: int) -> int:
        """At most what the samples of a story of ``frames`` frames hold in the object store, in any pass."""


class FrameCut(StageCut):
    """Stage 1: one sample per frame."""

    names, stacked = FRAME_COLUMNS, True

    def __init__(self, vit_size: int, sd_size: int) -> None:
        self.vit_size, self.sd_size = vit_size, sd_size

    def __call__(self, story: Story, pass_index: int) -> Iterator[dict]:
        for index, sample in enumerate(stage1_samples(story.images, self.vit_size, self.sd_size)):
            yield {"key": story.key, "frame": index, **sample}

    def sample_count(self, frames: int) -> int:
        return frames

    def story_bytes(self, frames: int) -> int:
        return frames * (image_bytes(self.vit_size) + image_bytes(self.sd_size) + ROW_BYTES)


class WindowCut(StageCut):
    """Stages 2 and 3: the story's windows for the pass (stage 3's with the target at SD size)."""

    stacked = False

    def __init__(self, **sampler: object) -> None:
        self.sampler = WindowSampler(**sampler)
        self.names = WINDOW_COLUMNS + (("sd_pixels", "add_time_ids") if self.sampler.sd_size is not None else ())

    @property
    def dropped_too_long(self) -> int:
        return self.sampler.dropped_too_long

    def __call__(self, story: Story, pass_index: int) -> Iterator[dict]:
        yield from self.sampler.samples(story.key, story.captions, story.images, pass_index)

    def sample_count(self, frames: int) -> int:
        return window_count(frames, self.sampler.window_frames, self.sampler.min_context)

    def story_bytes(self, frames: int) -> int:
        s = self.sampler
        tokens = s.max_length * (2 * np.dtype(np.int64).itemsize + 1)  # input_ids, labels, image_mask
        target = image_bytes(s.sd_size) if s.sd_size is not None else 0
        window = min(frames, s.window_frames) * image_bytes(s.vit_size) + tokens + target + ROW_BYTES
        return self.sample_count(frames) * window


class StorySamples:
    """Fetch, decode and validate one group of stories and cut every valid story's samples from the
    pictures decoded while validating it; with a ``seed``, the group's samples are interleaved at random.

    A batch is one group: rows of ``pass``, ``group``, ``story`` and ``skip``, the same pass, group and
    skip on every row. Each sample gets its position in the stream (``pass``, ``group``, ``index`` in
    the group's interleaved order); the first ``skip`` samples are left out (a resumed stream).

    Accounting never holds a good batch up: each batch's report goes to the ledger without waiting, and
    the verdict on the previous batch's report (answered while this batch decoded) is read instead. A
    batch holding a bad record waits for its own verdict, so the pipeline stops at the record that
    spends the failure budget, not a batch later.
    """

    def __init__(self, stories: ray.ObjectRef, ledger: ray.actor.ActorHandle, cut: SampleCut,
                 seed: int | None) -> None:
        self.stories: StorySet = ray.get(stories)
        self.ledger, self.cut, self.seed = ledger, cut, seed
        self.names = (*cut.names, *POSITION_COLUMNS)
        self.reported_dropped = 0
        self.unread: ray.ObjectRef | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray | list]:
        pass_index, group, skip = int(batch["pass"][0]), int(batch["group"][0]), int(batch["skip"][0])
        rows, good, bad = [], [], []
        for story in batch["story"]:
            file, line = self.stories.where(int(story))
            try:
                loaded = self.stories.load(int(story))
            except BadRecordError as err:
                bad.append(asdict(BadRecord(file, line, err.kind.value, err.detail)))
                continue
            good.append((file, line, len(loaded.images)))
            rows.extend(self.cut(loaded, pass_index))
        self._report(good, bad)
        if self.seed is not None:
            order = np.random.default_rng([self.seed, pass_index, *(int(s) for s in batch["story"])])
            rows = [rows[i] for i in order.permutation(len(rows))]
        rows = [{**row, "pass": pass_index, "group": group, "index": index} for index, row in enumerate(rows)][skip:]
        if self.cut.stacked:
            return {name: np.stack([row[name] for row in rows]) if rows else np.zeros((0,)) for name in self.names}
        return {name: [row[name] for row in rows] for name in self.names}

    def _report(self, good: list[tuple[str, int, int]], bad: list[dict]) -> None:
        dropped, self.reported_dropped = self.cut.dropped_too_long - self.reported_dropped, self.cut.dropped_too_long
        sent = self.ledger.add.remote(good, bad, dropped)
        verdicts = [ref for ref in (self.unread, sent if bad else None) if ref is not None]
        self.unread = None if bad else sent
        for error in ray.get(verdicts):
            if error:
                raise FailureBudgetExceeded(error)


def decode_pool(data: DataConfig, reserved_cpus: float = 0.0, pools: int = 1) -> ray.data.ActorPoolStrategy:
    """``data.decode_concurrency`` actors, or (unset) a pool Ray Data grows from one actor to its share of
    the cluster's CPUs left after ``reserved_cpus`` (the stage's training workers), shared by ``pools``
    pools (one per training worker's stream)."""
    if data.decode_concurrency is not None:
        return ray.data.ActorPoolStrategy(size=data.decode_concurrency)
    free = ray.cluster_resources().get("CPU", 0.0) - reserved_cpus
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(free / pools / data.actor_cpus)))


def new_ledger(stories: StorySet, data: DataConfig) -> ray.actor.ActorHandle:
    return ray.remote(num_cpus=0)(StoryLedger).options(name=f"story-ledger-{uuid.uuid4().hex[:8]}").remote(
        len(stories), data.failure_budget)


@dataclass(frozen=True)
class Group:
    """Stories fetched and cut together (one map batch), and how many of their samples were consumed."""

    pass_index: int
    group: int
    stories: list[int]
    skip: int = 0


def groups_of(stories: Sequence[int], pass_index: int, size: int) -> list[Group]:
    """``stories`` in order, ``size`` at a time."""
    return [Group(pass_index, g, [int(s) for s in stories[start:start + size]])
            for g, start in enumerate(range(0, len(stories), size))]


def story_samples(stories: StorySet, data: DataConfig, groups: list[Group], cut: SampleCut,
                  ledger: ray.actor.ActorHandle, seed: int | None, reserved_cpus: float = 0.0,
                  pools: int = 1) -> ray.data.Dataset:
    """The samples ``cut`` makes of the valid stories of ``groups``, in order: one block, one map batch per group."""
    tables = [pa.table({"pass": [g.pass_index] * len(g.stories), "group": [g.group] * len(g.stories),
                        "story": g.stories, "skip": [g.skip] * len(g.stories)}) for g in groups]
    dataset = ray.data.from_arrow(tables).map_batches(
        StorySamples, fn_constructor_kwargs={"stories": ray.put(stories), "ledger": ledger, "cut": cut, "seed": seed},
        batch_size=None, compute=decode_pool(data, reserved_cpus, pools), num_cpus=data.actor_cpus,
    )
    dataset.context.execution_options.preserve_order = True
    return dataset


def samples_per_pass(cut: StageCut, stories: StorySet) -> int:
    """What one pass yields if every story is valid (counted on the driver, without a picture)."""
    return sum(cut.sample_count(stories.frames(index)) for index in range(len(stories)))


def passes_for(stage: Stage, config: SeedStoryConfig, stories: StorySet, cut: StageCut) -> int:
    """Passes that feed ``max_steps`` even with the failure budget spent, plus one spare for the samples
    lost to equal splits, ``drop_last`` and over-long windows."""
    settings = getattr(config.train, stage)
    needed = settings.max_steps * settings.grad_accum_steps * settings.micro_batch_size * settings.num_workers
    usable = samples_per_pass(cut, stories) * (1 - config.data.failure_budget)
    if usable <= 0:
        raise ValueError(f"{stories.describe()} yields no {stage} sample")
    return math.ceil(needed / usable) + 1


def stage_cut(stage: Stage, config: SeedStoryConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> StageCut:
    model, data = config.model, config.data
    if stage == "detokenizer_pretrain":
        return FrameCut(model.vit.image_size, model.sd_image_size)
    if tokenizer is None:
        raise ValueError(f"stage {stage!r} builds token layouts and needs a tokenizer")
    return WindowCut(tokenizer=tokenizer, image_tokens=model.image_tokens, vit_size=model.vit.image_size,
                     window_frames=data.window_frames, min_context=data.min_context_frames, max_length=data.max_length,
                     seed=data.seed, sd_size=model.sd_image_size if stage == "detokenizer_adapt" else None)


def stage_dataset(stage: Stage, config: SeedStoryConfig, split: Split,
                  tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[ray.data.Dataset, DataReport]:
    """The samples of one stage for ``split`` of ``config.data``, once, in file order with the windows of
    pass 0 (training reads ``seedstory.data.streams.StoryStream`` instead)."""
    stories = split_stories(config, split)
    ledger = new_ledger(stories, config.data)
    groups = groups_of(range(len(stories)), 0, config.data.preprocess_batch_size)
    cut = stage_cut(stage, config, tokenizer)
    return story_samples(stories, config.data, groups, cut, ledger, None), DataReport(ledger)


def validation_set(stage: Stage, config: SeedStoryConfig,
                   tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[ray.data.MaterializedDataset, DataReport]:
    """The val split's samples, materialised (the first ``val_batches`` micro-batches per worker).

    Every worker reads all of it and evaluates its share (``seedstory.training.loop``), so it must
    hold at least one sample per worker.
    """
    settings = getattr(config.train, stage)
    dataset, report = stage_dataset(stage, config, "val", tokenizer)
    if settings.val_batches is not None:
        dataset = dataset.limit(settings.val_batches * settings.micro_batch_size * settings.num_workers)
    val = dataset.materialize()
    if (count := val.count()) < settings.num_workers:
        raise ValueError(f"the val split ({config.data.prepared or ', '.join(config.data.val_jsonl)}) yields {count} "
                         f"{stage} samples, fewer "
                         f"than one per worker ({settings.num_workers}): give it more stories, or set "
                         f"train.{stage}.val_every=null to train without validation")
    return val, report
