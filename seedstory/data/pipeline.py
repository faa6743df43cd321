"""Ray Data pipelines: JSONL lines -> validated stories -> stage samples -> Ray Train workers.

The JSONL lines are read on the driver (they are small; the images are not) so that every
bad record keeps its file and line number. Loading (fetch + decode + validate) and sample
building run as ``map_batches`` on CPU actors. One ``StoryLedger`` actor per dataset counts
good and bad stories across all of them and stops the pipeline, with an error naming the
first bad records, as soon as the failure budget is exceeded.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from typing import Literal

import numpy as np
import ray
from ray.data.collate_fn import NumpyBatchCollateFn
import torch
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.badrecords import BadRecord, BadRecordError, BadRecordLedger, FailureBudgetExceeded
from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.samples import WindowSampler, stage1_samples
from seedstory.data.sources import StoryLine, expand_jsonl, read_story_lines
from seedstory.data.stories import load_story

log = logging.getLogger(__name__)

Stage = Literal["detokenizer_pretrain", "story_instruct", "detokenizer_adapt"]
Split = Literal["train", "val", "test"]


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
    """Fetch, decode and validate a batch of stories; bad ones go to the ledger, not downstream."""

    def __init__(self, image_root: str, ledger: ray.actor.ActorHandle) -> None:
        self.image_root = image_root
        self.ledger = ledger

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"key": [], "epoch": [], "captions": [], "frames": []}
        good, bad = [], []
        for file, line, text, epoch in zip(batch["file"], batch["line"], batch["text"], batch["epoch"]):
            story_line = StoryLine(str(file), int(line), str(text))
            try:
                story = load_story(story_line, self.image_root)
            except BadRecordError as err:
                bad.append(asdict(BadRecord(story_line.file, story_line.line, err.kind.value, err.detail)))
                continue
            good.append((story_line.file, story_line.line, len(story.frames)))
            out["key"].append(story.key)
            out["epoch"].append(int(epoch))
            out["captions"].append(list(story.captions))
            out["frames"].append(list(story.frames))
        error = ray.get(self.ledger.add.remote(good, bad))
        if error:
            raise FailureBudgetExceeded(error)
        return out


class FrameSamples:
    """Stage 1: one sample per frame."""

    def __init__(self, vit_size: int, sd_size: int) -> None:
        self.vit_size, self.sd_size = vit_size, sd_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [s for frames in batch["frames"] for s in stage1_samples(list(frames), self.vit_size, self.sd_size)]
        return {name: np.stack([row[name] for row in rows]) if rows else np.zeros((0,)) for name in
                ("vit_pixels", "sd_pixels", "add_time_ids")}


class WindowSamples:
    """Stages 2 and 3: one sample per random-length window; reports over-long windows."""

    def __init__(self, ledger: ray.actor.ActorHandle, **sampler: object) -> None:
        self.ledger = ledger
        self.sampler = WindowSampler(**sampler)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        before = self.sampler.dropped_too_long
        rows = [
            sample
            for key, captions, frames, epoch in zip(batch["key"], batch["captions"], batch["frames"], batch["epoch"])
            for sample in self.sampler.samples(str(key), [str(c) for c in captions], list(frames), int(epoch))
        ]
        if self.sampler.dropped_too_long > before:
            self.ledger.add_dropped.remote(self.sampler.dropped_too_long - before)
        names = ["key", "start", "num_images", "input_ids", "labels", "image_mask", "vit_pixels"]
        if self.sampler.sd_size is not None:
            names += ["sd_pixels", "add_time_ids"]
        return {name: [row[name] for row in rows] for name in names}


def story_dataset(jsonl: str | list[str], image_root: str, config: SeedStoryConfig,
                  epochs: int = 1) -> tuple[ray.data.Dataset, DataReport]:
    """Valid stories as a Ray Dataset (bytes, not pixels), each line repeated for ``epochs`` epochs."""
    lines = list(read_story_lines(expand_jsonl(jsonl)))
    ledger = StoryLedger.options(name=f"story-ledger-{uuid.uuid4().hex[:8]}").remote(
        len(lines), config.data.failure_budget)
    items = [{"file": l.file, "line": l.line, "text": l.text, "epoch": e} for e in range(epochs) for l in lines]
    data = config.data
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * data.decode_concurrency))).map_batches(
        LoadStories, fn_constructor_kwargs={"image_root": image_root, "ledger": ledger},
        batch_size=data.preprocess_batch_size, compute=ray.data.ActorPoolStrategy(size=data.decode_concurrency),
        num_cpus=data.actor_cpus,
    )
    return dataset, DataReport(ledger)


def split_jsonl(config: SeedStoryConfig, split: Split) -> list[str]:
    return {"train": config.data.train_jsonl, "val": config.data.val_jsonl, "test": config.data.test_jsonl}[split]


def stage_dataset(stage: Stage, config: SeedStoryConfig, split: Split = "train",
                  tokenizer: PreTrainedTokenizerBase | None = None,
                  epochs: int = 1) -> tuple[ray.data.Dataset, DataReport]:
    """The samples of one training stage (DESIGN.md table) for ``split`` of ``config.data``."""
    stories, report = story_dataset(split_jsonl(config, split), config.data.image_root, config, epochs)
    data, model = config.data, config.model
    common = {"batch_size": data.preprocess_batch_size, "num_cpus": data.actor_cpus,
              "compute": ray.data.ActorPoolStrategy(size=data.decode_concurrency)}
    if stage == "detokenizer_pretrain":
        return stories.map_batches(FrameSamples, fn_constructor_kwargs={
            "vit_size": model.vit.image_size, "sd_size": model.sd_image_size}, **common), report
    if tokenizer is None:
        raise ValueError(f"stage {stage!r} builds token layouts and needs a tokenizer")
    sampler = {"tokenizer": tokenizer, "image_tokens": model.image_tokens, "vit_size": model.vit.image_size,
               "window_frames": data.window_frames, "min_context": data.min_context_frames,
               "max_length": data.max_length, "seed": data.seed,
               "sd_size": model.sd_image_size if stage == "detokenizer_adapt" else None}
    return stories.map_batches(WindowSamples, fn_constructor_kwargs={"ledger": report.ledger, **sampler},
                               **common), report


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
