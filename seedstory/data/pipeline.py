"""Ray Data pipelines: JSONL lines -> validated stories -> stage samples -> Ray Train workers.

The JSONL lines are read on the driver (they are small; the images are not) so that every
bad record keeps its file and line number. Loading (fetch + decode + validate) and sample
building run as ``map_batches`` on CPU actors. One ``StoryLedger`` actor per dataset counts
good and bad stories across all of them and stops the pipeline, with an error naming the
first bad records, as soon as the failure budget is exceeded.

Training data is one stream of passes. A pass is every training story once, in an order drawn
from (``data.seed``, pass), each story cut into windows drawn from (``data.seed``, pass, story
key). The driver lays the stream out as (pass, story) items, as many passes as ``max_steps``
needs, so the pass index reaches the map that cuts windows as plain data: one Ray Data
execution serves the whole run, with no state kept between executions or in actors.

Shuffling is streaming, in two levels: the story order of each pass is a permutation made on
the driver (global and free: the items are indices), and each training worker draws its batches
at random from a seeded local shuffle buffer (``worker_batches``, ``data.shuffle_buffer``
samples), which mixes the samples of the stories in flight; stage 1 also interleaves the frames
of the stories in each map batch, since one story yields up to 30 frames in a row. Ray Data's
``random_shuffle`` would mix samples across the whole stream, but it is an all-to-all exchange
that materialises every decoded sample before the first batch: too much memory and latency for
pixels, and no better for SGD than a global story order plus a local buffer.

Validation data is the val split once, in file order, with the windows of pass 0: the same
samples in the same order at every evaluation. ``validation_set`` materialises it once in the
object store, so evaluations re-read it without decoding and without taking CPUs from training.
"""

from __future__ import annotations

import logging
import math
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Literal

import numpy as np
import ray
from ray.data.collate_fn import NumpyBatchCollateFn
import torch
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.config.data import DataConfig
from seedstory.data.badrecords import BadRecord, BadRecordError, BadRecordLedger, FailureBudgetExceeded
from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.records import parse_story
from seedstory.data.samples import WindowSampler, stage1_samples
from seedstory.data.sources import StoryLine, expand_jsonl, read_story_lines
from seedstory.data.stories import load_story
from seedstory.data.windows import window_count

log = logging.getLogger(__name__)

Stage = Literal["detokenizer_pretrain", "story_instruct", "detokenizer_adapt"]
Split = Literal["train", "val", "test"]
FRAME_COLUMNS = ("vit_pixels", "sd_pixels", "add_time_ids", "key", "frame", "pass")


@ray.remote(num_cpus=0)
class StoryLedger:
    """Counts each (file, line) once however many epochs or retries see it."""

    def __init__(self, total_stories: int, failure_budget: float) -> None:
        self.ledger = BadRecordLedger(total_stories, failure_budget)
        self.seen: set[tuple[str, int]] = set()
        self.dropped_too_long = 0

    def add(self, good: list[tuple[str, int, int]], bad: list[dict]) -> str | None:
        """Returns the budget error message once the budget is exceeded, else None."""
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

    def add_dropped(self, count: int) -> None:
        self.dropped_too_long += count

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


class LoadStories:
    """Fetch, decode and validate a batch of (pass, story) items; bad stories go to the ledger, not downstream."""

    def __init__(self, lines: ray.ObjectRef, image_root: str, ledger: ray.actor.ActorHandle) -> None:
        self.lines: list[StoryLine] = ray.get(lines)
        self.image_root = image_root
        self.ledger = ledger

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"key": [], "pass": [], "captions": [], "frames": []}
        good, bad = [], []
        for pass_index, story in zip(batch["pass"], batch["story"]):
            story_line = self.lines[int(story)]
            try:
                loaded = load_story(story_line, self.image_root)
            except BadRecordError as err:
                bad.append(asdict(BadRecord(story_line.file, story_line.line, err.kind.value, err.detail)))
                continue
            good.append((story_line.file, story_line.line, len(loaded.frames)))
            out["key"].append(loaded.key)
            out["pass"].append(int(pass_index))
            out["captions"].append(list(loaded.captions))
            out["frames"].append(list(loaded.frames))
        error = ray.get(self.ledger.add.remote(good, bad))
        if error:
            raise FailureBudgetExceeded(error)
        return out


def _batch_rng(seed: int, batch: dict[str, np.ndarray]) -> np.random.Generator:
    """A generator drawn from the seed and the (pass, story) content of a batch, not from where it runs."""
    content = "|".join(f"{p}:{k}" for p, k in zip(batch["pass"], batch["key"]))
    return np.random.default_rng([seed, zlib.crc32(content.encode())])


class FrameSamples:
    """Stage 1: one sample per frame, the frames of the batch's stories interleaved at random."""

    def __init__(self, vit_size: int, sd_size: int, seed: int) -> None:
        self.vit_size, self.sd_size, self.seed = vit_size, sd_size, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [{"key": key, "frame": index, "pass": pass_index, **sample}
                for key, pass_index, frames in zip(batch["key"], batch["pass"], batch["frames"])
                for index, sample in enumerate(stage1_samples(list(frames), self.vit_size, self.sd_size))]
        rows = [rows[i] for i in _batch_rng(self.seed, batch).permutation(len(rows))]
        return {name: np.stack([row[name] for row in rows]) if rows else np.zeros((0,)) for name in FRAME_COLUMNS}


class WindowSamples:
    """Stages 2 and 3: the windows of each story for its pass; reports over-long windows."""

    def __init__(self, ledger: ray.actor.ActorHandle, **sampler: object) -> None:
        self.ledger = ledger
        self.sampler = WindowSampler(**sampler)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        before = self.sampler.dropped_too_long
        stories = zip(batch["key"], batch["captions"], batch["frames"], batch["pass"])
        rows = [
            {**sample, "pass": int(pass_index)}
            for key, captions, frames, pass_index in stories
            for sample in self.sampler.samples(str(key), [str(c) for c in captions], list(frames), int(pass_index))
        ]
        if self.sampler.dropped_too_long > before:
            self.ledger.add_dropped.remote(self.sampler.dropped_too_long - before)
        names = ["key", "pass", "start", "num_images", "input_ids", "labels", "image_mask", "vit_pixels"]
        if self.sampler.sd_size is not None:
            names += ["sd_pixels", "add_time_ids"]
        return {name: [row[name] for row in rows] for name in names}


def pass_items(stories: int, passes: int, seed: int, shuffle: bool) -> list[dict[str, int]]:
    """(pass, story) items: every story once per pass, in an order drawn from (seed, pass) when shuffling."""
    return [{"pass": p, "story": int(story)}
            for p in range(passes)
            for story in (np.random.default_rng([seed, p]).permutation(stories) if shuffle else range(stories))]


def story_dataset(lines: list[StoryLine], image_root: str, config: SeedStoryConfig,
                  items: list[dict[str, int]]) -> tuple[ray.data.Dataset, DataReport]:
    """Valid stories as a Ray Dataset (bytes, not pixels), one row per (pass, story) item."""
    ledger = StoryLedger.options(name=f"story-ledger-{uuid.uuid4().hex[:8]}").remote(
        len(lines), config.data.failure_budget)
    data = config.data
    blocks = max(1, math.ceil(len(items) / data.preprocess_batch_size))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        LoadStories, fn_constructor_kwargs={"lines": ray.put(lines), "image_root": image_root, "ledger": ledger},
        batch_size=data.preprocess_batch_size, compute=ray.data.ActorPoolStrategy(size=data.decode_concurrency),
        num_cpus=data.actor_cpus,
    )
    return dataset, DataReport(ledger)


def samples_per_pass(stage: Stage, lines: list[StoryLine], data: DataConfig) -> int:
    """What one pass yields if every story is valid (parsed on the driver: the image counts are in the JSON)."""
    frames = []
    for line in lines:
        try:
            frames.append(len(parse_story(line.text).images))
        except BadRecordError:
            frames.append(0)
    if stage == "detokenizer_pretrain":
        return sum(frames)
    return sum(window_count(count, data.window_frames, data.min_context_frames) for count in frames)


def passes_for(stage: Stage, config: SeedStoryConfig, per_pass: int) -> int:
    """Passes that feed ``max_steps`` even with the failure budget spent, plus one spare for the samples
    lost to equal splits, ``drop_last`` and over-long windows."""
    settings = getattr(config.train, stage)
    needed = settings.max_steps * settings.grad_accum_steps * settings.micro_batch_size * settings.num_workers
    usable = per_pass * (1 - config.data.failure_budget)
    if usable <= 0:
        raise ValueError(f"the training split ({', '.join(config.data.train_jsonl)}) yields no {stage} sample")
    return math.ceil(needed / usable) + 1


def split_jsonl(config: SeedStoryConfig, split: Split) -> list[str]:
    return {"train": config.data.train_jsonl, "val": config.data.val_jsonl, "test": config.data.test_jsonl}[split]


def stage_dataset(stage: Stage, config: SeedStoryConfig, split: Split = "train",
                  tokenizer: PreTrainedTokenizerBase | None = None,
                  passes: int | None = None) -> tuple[ray.data.Dataset, DataReport]:
    """The samples of one training stage for ``split`` of ``config.data``.

    ``train``: ``passes`` shuffled passes with fresh windows (default: enough for ``max_steps``);
    ``val``/``test``: one pass in file order with the windows of pass 0.
    """
    lines = list(read_story_lines(expand_jsonl(split_jsonl(config, split))))
    shuffle = split == "train"
    if passes is None:
        passes = passes_for(stage, config, samples_per_pass(stage, lines, config.data)) if shuffle else 1
    items = pass_items(len(lines), passes, config.data.seed, shuffle)
    stories, report = story_dataset(lines, config.data.image_root, config, items)
    data, model = config.data, config.model
    common = {"batch_size": data.preprocess_batch_size, "num_cpus": data.actor_cpus,
              "compute": ray.data.ActorPoolStrategy(size=data.decode_concurrency)}
    if stage == "detokenizer_pretrain":
        return stories.map_batches(FrameSamples, fn_constructor_kwargs={
            "vit_size": model.vit.image_size, "sd_size": model.sd_image_size, "seed": data.seed}, **common), report
    if tokenizer is None:
        raise ValueError(f"stage {stage!r} builds token layouts and needs a tokenizer")
    sampler = {"tokenizer": tokenizer, "image_tokens": model.image_tokens, "vit_size": model.vit.image_size,
               "window_frames": data.window_frames, "min_context": data.min_context_frames,
               "max_length": data.max_length, "seed": data.seed,
               "sd_size": model.sd_image_size if stage == "detokenizer_adapt" else None}
    return stories.map_batches(WindowSamples, fn_constructor_kwargs={"ledger": report.ledger, **sampler},
                               **common), report


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
    dataset.context.execution_options.preserve_order = True
    val = dataset.materialize()
    if (count := val.count()) < settings.num_workers:
        raise ValueError(f"the val split ({', '.join(config.data.val_jsonl)}) yields {count} {stage} samples, fewer "
                         f"than one per worker ({settings.num_workers}): give it more stories, or set "
                         f"train.{stage}.val_every=null to train without validation")
    return val, report


def worker_batches(shard: ray.data.DataIterator, data: DataConfig, batch_size: int, collate: NumpyBatchCollateFn,
                   epoch: int, rank: int) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of a training worker's shard, in batches drawn from a local shuffle buffer seeded by
    (``data.seed``, epoch, rank): the same order whenever the same stream is read again (resume)."""
    seed = int(np.random.SeedSequence([data.seed, epoch, rank]).generate_state(1)[0])
    return shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=True,
                                    local_shuffle_buffer_size=data.shuffle_buffer or None, local_shuffle_seed=seed)


class WindowCollate(NumpyBatchCollateFn):
    """Pads a batch of windows: ids with ``pad_id``, labels with -100; images are concatenated
    (``[sum of num_images, 3, H, W]``, sample order, each sample's target last) for one ViT pass."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids in batch["input_ids"]]
        width = max(lengths)
        size = len(lengths)
        input_ids = torch.full((size, width), self.pad_id, dtype=torch.long)
        labels = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
        image_mask = torch.zeros((size, width), dtype=torch.bool)
        attention_mask = torch.zeros((size, width), dtype=torch.long)
        for row, length in enumerate(lengths):
            input_ids[row, :length] = torch.as_tensor(batch["input_ids"][row])
            labels[row, :length] = torch.as_tensor(batch["labels"][row])
            image_mask[row, :length] = torch.as_tensor(batch["image_mask"][row])
            attention_mask[row, :length] = 1
        out = {"input_ids": input_ids, "labels": labels, "image_mask": image_mask, "attention_mask": attention_mask,
               "num_images": torch.tensor(np.asarray(batch["num_images"], dtype=np.int64)),
               "vit_pixels": torch.cat([torch.as_tensor(np.asarray(p)) for p in batch["vit_pixels"]])}
        if "sd_pixels" in batch:
            out["sd_pixels"] = torch.as_tensor(np.stack(list(batch["sd_pixels"])))
            out["add_time_ids"] = torch.as_tensor(np.stack(list(batch["add_time_ids"])))
        return out
