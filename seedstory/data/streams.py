"""What a training worker reads: its own share of the samples, in an order fixed by the seed, from any position.

Every worker builds its own Ray Data execution, starting where its last checkpoint says its stream
goes on (``TrainStream.batches``), so a resumed run reads exactly the samples the uninterrupted run
would have read next: nothing that was consumed is fetched or decoded again, and the samples are
the same ones in the same order. (A stream split across workers by Ray Train is dealt to them as
blocks finish, so which worker gets which sample changes from run to run, and Ray Data cannot
start an execution mid-stream.)

``StoryStream`` (the three SEED-Story stages): pass ``p`` deals every training story once, in an
order drawn from (``data.seed``, p), to the workers in turn; each worker fetches, decodes and cuts
its stories ``data.preprocess_batch_size`` at a time (a group), with the group's samples
interleaved at random, and a sample's position is (pass, group, index in the group). That
interleaving is the shuffle: one story yields up to 30 frames or windows, and a micro-batch is
drawn from a whole group of stories. A local shuffle buffer would mix more widely, but its
contents at a checkpoint are not a position a stream can restart from.

``EpochStream`` (the tiny bases, whose data fits in the object store): the materialised dataset
split equally, re-read every pass through a local shuffle buffer seeded by (seed, pass, rank);
a resumed pass re-reads the object store up to its position, decoding nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.pipeline import (POSITION_COLUMNS, DataReport, SampleCut, Stage, groups_of, new_ledger,
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
    """A training split's samples for one stage, ``passes`` passes per Ray Data execution."""

    stories: StorySet
    config: SeedStoryConfig
    cut: SampleCut
    ledger: ray.actor.ActorHandle
    passes: int
    reserved_cpus: float = 0.0

    def dealt(self, rank: int, world: int, pass_index: int) -> list[int]:
        """The stories rank ``rank`` reads in pass ``pass_index``, in reading order."""
        order = np.random.default_rng([self.config.data.seed, pass_index]).permutation(len(self.stories))
        return order[rank::world].tolist()

    def dataset(self, rank: int, world: int, start: Position) -> ray.data.Dataset:
        """Rank ``rank``'s samples from ``start`` to the end of the execution's last pass."""
        first, group, index = start.get("pass", 0), start.get("group", 0), start.get("index", 0)
        end = (first // self.passes + 1) * self.passes
        size = self.config.data.preprocess_batch_size
        groups = [g for p in range(first, end) for g in groups_of(self.dealt(rank, world, p), p, size)
                  if p > first or g.group >= group]
        if groups and (groups[0].pass_index, groups[0].group) == (first, group):
            groups[0] = replace(groups[0], skip=index)
        return story_samples(self.stories, self.config.data, groups, self.cut, self.ledger, self.config.data.seed,
                             self.reserved_cpus, pools=world)

    def batches(self, rank: int, world: int, batch_size: int, collate: NumpyBatchCollateFn,
                start: Position) -> Iterator[tuple[Batch, Position]]:
        position = dict(start)
        while True:
            first = (position.get("pass", 0) % self.passes, position.get("group", 0), position.get("index", 0))
            delivered = 0
            for batch in self.dataset(rank, world, position).iter_torch_batches(
                    batch_size=batch_size, collate_fn=PositionCollate(collate), drop_last=True):
                pass_index, group, index = batch.pop(POSITION).tolist()
                position = {"pass": pass_index, "group": group, "index": index + 1}
                delivered += 1
                yield batch, position
            if delivered == 0 and first == (0, 0, 0):  # a resumed execution may have no full batch left
                raise RuntimeError(f"rank {rank}'s share of the training data yields no batch of {batch_size} in "
                                   f"{self.passes} passes: the split is empty or too small for {world} workers")
            position = {"pass": (position.get("pass", 0) // self.passes + 1) * self.passes}  # the next execution


@dataclass
class EpochStream(TrainStream):
    """A materialised dataset, split equally across the workers and read once per pass."""

    dataset: ray.data.MaterializedDataset
    seed: int
    shuffle_buffer: int

    def batches(self, rank: int, world: int, batch_size: int, collate: NumpyBatchCollateFn,
                start: Position) -> Iterator[tuple[Batch, Position]]:
        shard = self.dataset.split(world, equal=True)[rank]
        pass_index, skip = start.get("pass", 0), start.get("batches", 0)
        while True:
            seed = int(np.random.SeedSequence([self.seed, pass_index, rank]).generate_state(1)[0])
            delivered = 0
            for delivered, batch in enumerate(shard.iter_torch_batches(
                    batch_size=batch_size, collate_fn=collate, drop_last=True,
                    local_shuffle_buffer_size=self.shuffle_buffer or None, local_shuffle_seed=seed), start=1):
                if delivered > skip:
                    yield batch, {"pass": pass_index, "batches": delivered}
            if delivered == 0:
                raise RuntimeError(f"rank {rank}'s share of the training data yields no batch of {batch_size}: "
                                   f"the dataset holds fewer than {batch_size * world} rows")
            pass_index, skip = pass_index + 1, 0


def stage_stream(stage: Stage, config: SeedStoryConfig,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[StoryStream, DataReport]:
    """The training split as a stream for ``stage``: each Ray Data execution holds the passes ``max_steps``
    needs (one spare), so a run reads one unless a worker's share runs short."""
    stories = split_stories(config, "train")
    settings = getattr(config.train, stage)
    ledger = new_ledger(stories, config.data)
    stream = StoryStream(stories, config, stage_cut(stage, config, tokenizer), ledger,
                         passes=passes_for(stage, config, stories),
                         reserved_cpus=settings.num_workers * settings.cpus_per_worker)
    return stream, DataReport(ledger)
