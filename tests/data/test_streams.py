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


class IdsOnly(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"id": torch.as_tensor(batch["id"])}


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


def test_whole_micro_batches_whatever_sizes_the_buffer_hands_out():
    """Chunks of any size (a short one mid-pass, one whose sequences agree in length and so come as a 2-D array)
    make whole micro-batches of rows never read twice; only the pass's last rows that fill none are left."""
    lengths = [3, 9, 4, 4, 4, 4, 4, 7, 1, 8, 2, 6, 5, 3, 2, 9, 8, 1, 7, 5, 6, 2, 4]
    rows = [np.arange(n) for n in lengths]

    def chunk(first: int, count: int) -> dict[str, np.ndarray]:
        ids = np.empty(count, dtype=object)
        ids[:] = [None] * count
        for i in range(count):
            ids[i] = rows[first + i]
        same = len({lengths[first + i] for i in range(count)}) == 1
        return {"id": np.arange(first, first + count), "input_ids": np.stack(ids) if same else ids}

    chunks = [chunk(0, 2), chunk(2, 5), chunk(7, 6), chunk(13, 6), chunk(19, 4)]  # chunk(2, 5): all of length 4
    for stream in (EpochStream(None, 0, 0), EpochStream(None, 0, 0, by_length="input_ids", length_groups=2)):
        together = 4 * (2 if stream.by_length else 1)
        batches = list(stream._micro_batches(iter(chunks), together, 4, np.random.default_rng(0)))
        read = [i for b in batches for i in b["id"]]
        assert all(len(b["id"]) == 4 for b in batches) and len(read) == 20 and len(set(read)) == 20
        assert all(len(ids) == lengths[i] for b in batches for i, ids in zip(b["id"], b["input_ids"]))


def test_frames_read_every_row_once_a_pass_where_the_shuffle_buffer_hands_out_a_short_batch(ray_cluster):
    """512 frames of the bases' size: Ray Data 2.60's buffer hands each rank 64, 64, 34, 64 and 30 of its 256."""
    frames = ray.data.from_items([{"id": i, "pixels": np.zeros((3, 56, 56), np.float32)} for i in range(512)])
    stream = EpochStream(frames.materialize(), seed=0, shuffle_buffer=64)
    read = []
    for rank in range(WORLD):
        batches = list(islice(stream.batches(rank, WORLD, 64, IdsOnly(), {}), 256 // 64 + 1))
        assert [at["pass"] for _, at in batches] == [0, 0, 0, 0, 1]
        read += [i for b, at in batches if at["pass"] == 0 for i in b["id"].tolist()]
    assert sorted(read) == list(range(512))


def test_a_grouped_stream_resumed_mid_pass_reads_what_the_whole_one_read_next(stories):
    stream = EpochStream(stories, seed=3, shuffle_buffer=16, by_length="input_ids", length_groups=GROUPS)
    whole = read(stream, 1)
    resumed_at = whole[PER_PASS // 2 - 1]
    start = {"pass": resumed_at["pass"], "batches": resumed_at["batches"]}
    assert read(stream, 1, start=start)[:PER_PASS] == whole[PER_PASS // 2:PER_PASS // 2 + PER_PASS]
