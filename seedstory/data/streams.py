"""What a training worker reads: its own share of the samples, in an order fixed by the seed, from any position.

Every worker builds its own Ray Data execution, starting where its last checkpoint says its stream
goes on (``TrainStream.batches``), so a resumed run reads exactly the samples the uninterrupted run
would have read next, the same ones in the same order; of what was consumed, only the group the
checkpoint fell in is fetched and decoded again, the samples read before it skipped. (A stream split across workers by Ray Train is dealt to them as
blocks finish, so which worker gets which sample changes from run to run, and Ray Data cannot
start an execution mid-stream.)

``StoryStream`` (the three SEED-Story stages): pass ``p`` deals every training story once, in an
order drawn from (``data.seed``, p), to the workers in turn; each worker fetches, decodes and cuts
its stories ``data.preprocess_batch_size`` at a time (a group), with the group's samples
interleaved at random, and a sample's position is (pass, group, index in the group). That
interleaving is the shuffle: one story yields up to 30 frames or windows, and a micro-batch is
drawn from a whole group of stories. A local shuffle buffer would mix more widely, but its
contents at a checkpoint are not a position a stream can restart from. A worker's stream is a
chain of executions of ``groups`` groups each (``groups_per_execution``), one after another, each
small enough to be decoded ahead of training into the object store, the next one started halfway
through the current one (a run that ends in the first half of an execution starts no other); an
execution's last partial micro-batch is dropped, and a resumed run's executions end where the
uninterrupted run's did: a position carries its run's ``groups``, which a resumed run keeps even
where its own object store would size executions otherwise.

``EpochStream`` (the tiny bases, whose data fits in the object store): the materialised dataset
split equally, re-read every pass through a local shuffle buffer seeded by (seed, pass, rank);
a resumed pass re-reads the object store up to its position, decoding nothing. Sequences of
different lengths (the LLM base's stories) can be grouped by length: a few micro-batches are drawn
from the buffer together, cut in order of length and read in a seeded random order, so that a
micro-batch pads less (transformers' ``group_by_length``, its megabatches a few micro-batches wide).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.pipeline import (POSITION_COLUMNS, DataReport, Group, Stage, StageCut, groups_of, new_ledger,
                                     passes_for, stage_cut, story_samples)
from seedstory.data.story_sets import StorySet, split_stories

Batch = dict[str, torch.Tensor]
Position = dict[str, int]
POSITION = "_position"


class TrainStream(ABC):
    @abstractmethod
    def batches(self, rank: int, world: int, batch_size: int, collate: NumpyBatchCollateFn,
                start: Position) -> Iterator[tuple[Batch, Position]]:
        """Endless: rank ``rank``'s micro-batches from ``start`` (``{}``: the beginning; otherwise a
        position this method yielded), each with the position that follows it."""


class PositionCollate(NumpyBatchCollateFn):
    """The stage's collate, plus the position of the batch's last sample (its ``pass``, ``group``, ``index``)."""

    def __init__(self, collate: NumpyBatchCollateFn) -> None:
        self.collate = collate

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        last = [int(np.asarray(batch[name])[-1]) for name in POSITION_COLUMNS]
        return {**self.collate(batch), POSITION: torch.tensor(last)}


@dataclass
class StoryStream(TrainStream):
    """A training split's samples for one stage, ``groups`` groups per Ray Data execution."""

    stories: StorySet
    config: SeedStoryConfig
    cut: StageCut
    ledger: ray.actor.ActorHandle
    groups: int
    reserved_cpus: float = 0.0

    def dealt(self, rank: int, world: int, pass_index: int) -> list[int]:
        """The stories rank ``rank`` reads in pass ``pass_index``, in reading order."""
        order = np.random.default_rng([self.config.data.seed, pass_index]).permutation(len(self.stories))
        return order[rank::world].tolist()

    def groups_of_pass(self, rank: int, world: int, pass_index: int) -> list[Group]:
        dealt = groups_of(self.dealt(rank, world, pass_index), pass_index, self.config.data.preprocess_batch_size)
        if not dealt:
            raise RuntimeError(f"rank {rank} is dealt no story of {self.stories.describe()} "
                               f"({len(self.stories)} stories for {world} workers)")
        return dealt

    def schedule(self, rank: int, world: int, start: Position) -> list[Group]:
        """Rank ``rank``'s groups from ``start`` to the end of the execution it falls in, across passes (the
        first one without the samples before ``start``).

        Executions are every ``groups`` groups of the rank's stream counted from its beginning (the
        position's ``groups`` when it carries one), wherever a run starts: each drops its last partial
        micro-batch, so a resumed run reads what the uninterrupted one read only if its executions end
        where that run's did."""
        first, group, index = start.get("pass", 0), start.get("group", 0), start.get("index", 0)
        groups = start.get("groups", self.groups)
        per_pass = len(self.groups_of_pass(rank, world, first))  # every pass deals the same stories to a rank
        ordinal = first * per_pass + group
        wanted = groups - ordinal % groups
        scheduled: list[Group] = []
        pass_index = first
        while len(scheduled) < wanted:
            scheduled += [g for g in self.groups_of_pass(rank, world, pass_index) if pass_index > first or g.group >= group]
            pass_index += 1
        scheduled = scheduled[:wanted]
        if (scheduled[0].pass_index, scheduled[0].group) == (first, group):
            scheduled[0] = replace(scheduled[0], skip=index)
        return scheduled

    def dataset(self, rank: int, world: int, start: Position) -> ray.data.Dataset:
        """One execution: the samples of rank ``rank``'s groups from ``start`` to the end of its execution."""
        return self._samples(self.schedule(rank, world, start), world)

    def batches(self, rank: int, world: int, batch_size: int, collate: NumpyBatchCollateFn,
                start: Position) -> Iterator[tuple[Batch, Position]]:
        groups = start.get("groups", self.groups)  # the checkpointed run's execution size, on any cluster
        with ThreadPoolExecutor(1, thread_name_prefix="next-execution") as starter:
            def execution(position: Position) -> Execution:
                scheduled = self.schedule(rank, world, position)
                batches = self._samples(scheduled, world).iter_torch_batches(
                    batch_size=batch_size, collate_fn=PositionCollate(collate), drop_last=True)
                return Execution(scheduled, batches, starter)

            current, upcoming = execution(start), None
            try:
                while True:
                    last = current.scheduled[-1]
                    following = {"pass": last.pass_index, "group": last.group + 1, "groups": groups}
                    halfway = self.sample_count(current.scheduled) // batch_size // 2
                    delivered = 0
                    for batch in current:
                        if delivered == halfway:
                            upcoming = execution(following)
                        delivered += 1
                        pass_index, group, index = batch.pop(POSITION).tolist()
                        yield batch, {"pass": pass_index, "group": group, "index": index + 1, "groups": groups}
                    if delivered == 0 and current.scheduled[0].skip == 0:  # a resumed one may have no full batch left
                        raise RuntimeError(
                            f"rank {rank}'s next {len(current.scheduled)} groups of {self.stories.describe()} yield no "
                            f"batch of {batch_size}: the split is too small for {world} workers, or "
                            f"data.stream_object_store_fraction too small for a batch")
                    current, upcoming = upcoming or execution(following), None
            finally:
                for started in (current, upcoming):
                    if started is not None:
                        started.close()

    def sample_count(self, scheduled: list[Group]) -> int:
        """What ``scheduled`` yields if every story is valid."""
        return sum(self.cut.sample_count(self.stories.frames(story)) for group in scheduled
                   for story in group.stories) - scheduled[0].skip

    def _samples(self, scheduled: list[Group], world: int) -> ray.data.Dataset:
        return story_samples(self.stories, self.config.data, scheduled, self.cut, self.ledger, self.config.data.seed,
                             self.reserved_cpus, pools=2 * world)


class Execution:
    """One Ray Data execution of a stream, started while the one before it is read: a thread takes its
    first batch, so its decoding actor starts and it decodes ahead (~4 s a boundary here otherwise)."""

    def __init__(self, scheduled: list[Group], batches: Iterator[Batch], starter: ThreadPoolExecutor) -> None:
        self.scheduled = scheduled
        self._batches = iter(batches)
        self._first = starter.submit(next, self._batches, None)

    def __iter__(self) -> Iterator[Batch]:
        first = self._first.result()
        if first is not None:
            yield first
            yield from self._batches

    def close(self) -> None:
        """Stops the execution where it is (after the first batch, if that is being taken)."""
        if not self._first.cancel():
            self._first.exception()  # waits without raising: the stream is being left anyway
        self._batches.close()


@dataclass
class EpochStream(TrainStream):
    """A materialised dataset, split equally across the workers and read once per pass; with ``by_length``
    (a column of sequences), ``length_groups`` micro-batches at a time are grouped by its rows' lengths."""

    dataset: ray.data.MaterializedDataset
    seed: int
    shuffle_buffer: int
    by_length: str | None = None
    length_groups: int = 1

    def batches(self, rank: int, world: int, batch_size: int, collate: NumpyBatchCollateFn,
                start: Position) -> Iterator[tuple[Batch, Position]]:
        shard = self.dataset.split(world, equal=True)[rank]
        pass_index, skip = start.get("pass", 0), start.get("batches", 0)
        together = batch_size * (self.length_groups if self.by_length else 1)
        while True:
            seed = int(np.random.SeedSequence([self.seed, pass_index, rank]).generate_state(1)[0])
            drawn = shard.iter_batches(batch_size=together, batch_format="numpy",
                                       local_shuffle_buffer_size=self.shuffle_buffer or None, local_shuffle_seed=seed)
            delivered = 0
            for rows in self._micro_batches(drawn, together, batch_size, np.random.default_rng(seed)):
                delivered += 1
                if delivered > skip:
                    yield collate(rows), {"pass": pass_index, "batches": delivered}
            if delivered == 0:
                raise RuntimeError(f"rank {rank}'s share of the training data yields no batch of {batch_size}: "
                                   f"the dataset holds fewer than {batch_size * world} rows")
            pass_index, skip = pass_index + 1, 0

    def _micro_batches(self, drawn: Iterator[dict[str, np.ndarray]], together: int, batch_size: int,
                       order: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
        """A pass's rows ``together`` at a time, whatever sizes the shuffle buffer hands out (Ray Data's can hand
        out a short batch mid-pass), as whole micro-batches; the last rows that fill none are dropped."""
        held: dict[str, np.ndarray] | None = None
        for chunk in drawn:
            held = {name: _joined(held[name], column) for name, column in chunk.items()} if held else chunk
            while len(held[next(iter(held))]) >= together:
                yield from self._cut({name: column[:together] for name, column in held.items()}, batch_size, order)
                held = {name: column[together:] for name, column in held.items()}
            if not len(held[next(iter(held))]):
                held = None  # the common case: the next chunk is taken as it comes, not copied
        if held:
            yield from self._cut(held, batch_size, order)

    def _cut(self, rows: dict[str, np.ndarray], batch_size: int,
             order: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
        """``rows`` (in shuffled order) as whole micro-batches, by length when grouping and then read in a random
        order; what fills no micro-batch is cut off first, so it is no particular length."""
        index = np.arange(len(rows[next(iter(rows))]) // batch_size * batch_size)
        if self.by_length:
            index = index[np.argsort([len(sequence) for sequence in rows[self.by_length][index]], kind="stable")]
        cuts = index.reshape(-1, batch_size)
        if self.by_length:
            cuts = cuts[order.permutation(len(cuts))]
        for cut in cuts:
            yield {name: column[cut] for name, column in rows.items()}


def _joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two batches' column end to end. Ray Data hands out sequences of different lengths as an object array, but
    a batch whose sequences happen to agree as a 2-D one: two such batches join as an object array of rows."""
    if first.shape[1:] == second.shape[1:]:
        return np.concatenate([first, second])
    rows = np.empty(len(first) + len(second), dtype=object)
    for index, row in enumerate([*first, *second]):
        rows[index] = row
    return rows


def groups_per_execution(stage: Stage, config: SeedStoryConfig, stories: StorySet, cut: StageCut) -> int:
    """Groups per Ray Data execution of a worker's stream: all that ``max_steps`` needs (``passes_for``),
    unless they outgrow the worker's part of ``data.stream_object_store_fraction`` of the cluster's
    object store. An execution that fits decodes ahead of training and ends; one that does not keeps
    finished blocks waiting for room, and Ray Data's scheduler (2.60) polls those in a busy loop."""
    world = getattr(config.train, stage).num_workers
    per_pass = math.ceil(len(stories) / world / config.data.preprocess_batch_size)  # a worker's groups per pass
    group_bytes = sum(cut.story_bytes(stories.frames(i)) for i in range(len(stories))) / world / per_pass
    executions = 2 * world  # each worker reads one while the next decodes (``StoryStream.batches``)
    share = ray.cluster_resources().get("object_store_memory", 0.0) * config.data.stream_object_store_fraction / executions
    return max(1, min(passes_for(stage, config, stories, cut) * per_pass, int(share // max(group_bytes, 1.0))))


def stage_stream(stage: Stage, config: SeedStoryConfig,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[StoryStream, DataReport]:
    """The training split as a stream for ``stage``, ``groups_per_execution`` groups per Ray Data execution."""
    stories = split_stories(config, "train")
    settings = getattr(config.train, stage)
    cut, ledger = stage_cut(stage, config, tokenizer), new_ledger(stories, config.data)
    stream = StoryStream(stories, config, cut, ledger, groups=groups_per_execution(stage, config, stories, cut),
                         reserved_cpus=settings.num_workers * settings.cpus_per_worker)
    return stream, DataReport(ledger)
