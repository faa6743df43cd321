"""``EpochStream``, the tiny bases' stream: every row once per pass, and micro-batches grouped by length.

(``StoryStream``, the stages' stream, is driven through the whole pipeline in ``test_pipeline.py``.)"""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import ray.data
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from seedstory.data.streams import EpochStream

ROWS, WORLD, BATCH, GROUPS = 48, 2, 4, 3
PER_PASS = ROWS // WORLD // BATCH


class RowsAndLengths(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"id": torch.as_tensor(batch["id"]),
                "length": torch.tensor([len(ids) for ids in batch["input_ids"]])}


@pytest.fixture(scope="module")
def stories(ray_cluster) -> ray.data.MaterializedDataset:
    lengths = np.random.default_rng(0).integers(5, 200, ROWS)
    return ray.data.from_items([{"id": i, "input_ids": np.arange(n)} for i, n in enumerate(lengths)]).materialize()


def read(stream: EpochStream, rank: int, passes: int = 2, start: dict | None = None) -> list[dict]:
    batches = stream.batches(rank, WORLD, BATCH, RowsAndLengths(), start or {})
    return [{"id": b["id"].tolist(), "length": b["length"].tolist(), **at}
            for b, at in islice(batches, passes * PER_PASS)]


def padded(batches: list[dict]) -> int:
    return sum(max(b["length"]) * BATCH - sum(b["length"]) for b in batches)


def test_grouped_by_length_each_pass_reads_every_row_once_with_less_padding(stories):
    grouped = EpochStream(stories, seed=0, shuffle_buffer=16, by_length="input_ids", length_groups=GROUPS)
    as_drawn = EpochStream(stories, seed=0, shuffle_buffer=16)
    read_grouped = {rank: read(grouped, rank) for rank in range(WORLD)}
    for pass_index in (0, 1):
        seen = [i for rank in range(WORLD) for b in read_grouped[rank] if b["pass"] == pass_index for i in b["id"]]
        assert sorted(seen) == list(range(ROWS)), pass_index
    for batches in read_grouped.values():
        assert [b["id"] for b in batches[:PER_PASS]] != [b["id"] for b in batches[PER_PASS:]]
        for first in range(0, len(batches), GROUPS):  # the micro-batches drawn together do not overlap in length
            spans = sorted((min(b["length"]), max(b["length"])) for b in batches[first:first + GROUPS])
            assert all(low[1] <= high[0] for low, high in zip(spans, spans[1:])), spans
    assert padded(read_grouped[0]) < padded(read(as_drawn, 0)) / 2


def test_a_grouped_stream_resumed_mid_pass_reads_what_the_whole_one_read_next(stories):
    stream = EpochStream(stories, seed=3, shuffle_buffer=16, by_length="input_ids", length_groups=GROUPS)
    whole = read(stream, 1)
    resumed_at = whole[PER_PASS // 2 - 1]
    start = {"pass": resumed_at["pass"], "batches": resumed_at["batches"]}
    assert read(stream, 1, start=start)[:PER_PASS] == whole[PER_PASS // 2:PER_PASS // 2 + PER_PASS]
