"""The released form -> the prepared form: every valid story once, its frames at the preset's sizes.

A shard of consecutive stories is one Parquet file, one row group per story (a training worker reads
exactly the stories it is dealt). Each frame keeps two lossless PNGs, the ViT's square resize and
SD-XL's crop, and the crop's ``add_time_ids`` with the original size, so the samples are exactly the
released form's and nothing is resized twice. Bad stories are counted by kind and left out, within
the failure budget. ``prepared.json`` goes last: a dataset without it is incomplete and is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.data.badrecords import BadRecord, BadRecordError, BadRecordLedger
from seedstory.data.images import encode_image
from seedstory.data.pipeline import decode_pool
from seedstory.data.pixels import sd_crop, vit_resize
from seedstory.data.stories import Story
from seedstory.data.story_sets import PREPARED_MANIFEST, Split, StorySet, prepared_sizes, split_stories

SCHEMA = pa.schema([
    ("key", pa.string()), ("images", pa.list_(pa.string())), ("captions", pa.list_(pa.string())),
    ("vit", pa.list_(pa.binary())), ("sd", pa.list_(pa.binary())), ("time_ids", pa.list_(pa.list_(pa.float32()))),
])


def prepared_row(story: Story, vit_size: int, sd_size: int) -> dict:
    crops = [sd_crop(image, sd_size) for image in story.images]
    return {"key": story.key, "images": list(story.record.images), "captions": list(story.captions),
            "vit": [encode_image(vit_resize(image, vit_size), ".png") for image in story.images],
            "sd": [encode_image(crop, ".png") for crop, _ in crops],
            "time_ids": [time_ids.tolist() for _, time_ids in crops]}


class PrepareShard:
    """Ray Data callable: one row per shard in, the shard's Parquet file written, its accounting out."""

    def __init__(self, stories: ray.ObjectRef, out: str, split: str, vit_size: int, sd_size: int) -> None:
        self.stories: StorySet = ray.get(stories)
        self.out, self.split, self.vit_size, self.sd_size = out, split, vit_size, sd_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        shard, first, stop = (int(batch[name][0]) for name in ("shard", "first", "stop"))
        rows, bad = [], []
        for index in range(first, stop):
            try:
                rows.append(prepared_row(self.stories.load(index), self.vit_size, self.sd_size))
            except BadRecordError as err:
                file, line = self.stories.where(index)
                bad.append(json.dumps(asdict(BadRecord(file, line, err.kind.value, err.detail))))
        name = f"{self.split}/part-{shard:05d}.parquet"
        if rows:
            filesystem, path = storage.arrow_filesystem_for(storage.join(self.out, name))
            if not storage.is_remote(self.out):
                filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, filesystem=filesystem, row_group_size=1)
        return {"shard": [shard], "file": [name if rows else ""], "frames": [json.dumps([len(r["vit"]) for r in rows])],
                "bad": [json.dumps(bad)]}


def prepare_split(config: SeedStoryConfig, split: Split, out: str, stories_per_shard: int) -> tuple[list[dict], BadRecordLedger]:
    """Write ``split``'s valid stories under ``out/<split>/``; its shards for the manifest and its ledger."""
    stories = split_stories(config, split)
    bounds = [(start, min(start + stories_per_shard, len(stories))) for start in range(0, len(stories), stories_per_shard)]
    items = [{"shard": shard, "first": first, "stop": stop} for shard, (first, stop) in enumerate(bounds)]
    model = config.model
    results = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        PrepareShard, batch_size=1, compute=decode_pool(config.data), num_cpus=config.data.actor_cpus,
        fn_constructor_kwargs={"stories": ray.put(stories), "out": out, "split": split,
                               "vit_size": model.vit.image_size, "sd_size": model.sd_image_size},
    ).take_all()
    ledger = BadRecordLedger(len(stories), config.data.failure_budget)
    shards = []
    for result in sorted(results, key=lambda r: r["shard"]):
        for record in json.loads(result["bad"]):
            ledger.record(BadRecord(**json.loads(record)))
        frames = json.loads(result["frames"])
        for count in frames:
            ledger.good(count)
        if result["file"]:
            shards.append({"file": result["file"], "frames": frames})
    ledger.check()
    return shards, ledger


def prepare_dataset(config: SeedStoryConfig, out: str, splits: list[Split],
                    stories_per_shard: int) -> tuple[dict, dict[str, BadRecordLedger]]:
    """Every split of ``config.data`` (released form) prepared under ``out``: the manifest written last, and
    each split's accounting."""
    if config.data.prepared is not None:
        raise ValueError(f"data.prepared is set ({config.data.prepared}): prepare from the released form "
                         "(data.*_jsonl and data.image_root), not from a prepared dataset")
    storage.remove_file(storage.join(out, PREPARED_MANIFEST))
    manifest: dict = {"sizes": prepared_sizes(config.model), "source": {
        **{f"{split}_jsonl": getattr(config.data, f"{split}_jsonl") for split in splits},
        "image_root": config.data.image_root}, "splits": {}, "data": {}}
    ledgers = {}
    for split in splits:
        shards, ledgers[split] = prepare_split(config, split, out, stories_per_shard)
        manifest["splits"][split] = shards
        manifest["data"][split] = ledgers[split].summary()
    storage.write_bytes(storage.join(out, PREPARED_MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest, ledgers
