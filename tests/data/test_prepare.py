"""The prepared form over the local stack: written from the released form, bad stories left out, and read
by every stage as exactly the released form's samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from seedstory import storage
from seedstory.config import load_config
from seedstory.data.images import encode_image
from seedstory.data.pipeline import stage_dataset
from seedstory.data.prepare import prepare_dataset
from seedstory.data.stage_collate import FrameCollate
from seedstory.data.records import StoryRecord
from seedstory.data.story_sets import PREPARED_MANIFEST, PreparedStories, split_stories
from seedstory.data.streams import stage_stream
from seedstory.data.toyworld.generate import toy_story, write_toy_world
from seedstory.tokenizer import build_tiny_tokenizer

pytestmark = pytest.mark.stack

STORIES = 6
WIDE = (96, 80)  # a frame that is not square: SD-XL's size conditioning must keep its original size


@pytest.fixture(scope="module")
def released(s3):
    """A toy world whose train split also holds a story with a wide frame, one with a missing picture and a
    broken line (the budget allows two bad stories of nine)."""
    uri = f"s3://{s3.bucket}/toy-prepare"
    config = load_config("tiny", [
        f"data.toy.stories={STORIES}", "data.toy.min_frames=3", "data.toy.max_frames=6", "data.toy.val_fraction=0.0",
        "data.toy.test_fraction=0.0", f"data.train_jsonl=[{uri}/all-train.jsonl]", f"data.val_jsonl=[{uri}/train.jsonl]",
        f"data.image_root={uri}/images", "data.failure_budget=0.25", "data.preprocess_batch_size=2",
    ])
    write_toy_world(config.data.toy, uri)
    first = toy_story(config.data.toy, 0).record
    storage.write_bytes(f"{uri}/images/wide.png", encode_image(Image.new("RGB", WIDE, (200, 30, 60)), ".png"))
    wide = StoryRecord(images=(first.images[0], "wide.png"), captions=first.captions[:2], id="wide")
    missing = StoryRecord(images=("nowhere.png",), captions=("a caption",), id="missing")
    lines = storage.read_bytes(f"{uri}/train.jsonl").decode().splitlines()
    storage.write_bytes(f"{uri}/all-train.jsonl", "\n".join(
        [lines[0], wide.to_line(), missing.to_line(), "{broken", *lines[1:]]).encode())
    captions = [c for i in range(STORIES) for c in toy_story(config.data.toy, i).record.captions]
    tokenizer = build_tiny_tokenizer([*captions, "[INST]"], config.model.llm.vocab_size, config.model.image_tokens)
    return config, tokenizer


@pytest.fixture(scope="module")
def prepared(released, ray_cluster, s3):
    config, _ = released
    out = f"s3://{s3.bucket}/toy-prepared"
    manifest, _ = prepare_dataset(config, out, ["train", "val"], stories_per_shard=3)
    return config.model_copy(update={"data": config.data.model_copy(update={"prepared": out})}), manifest


def test_bad_stories_are_counted_and_left_out_and_the_manifest_says_what_is_where(prepared):
    config, manifest = prepared
    train = manifest["data"]["train"]
    assert train["stories"] == STORIES + 1 and train["bad"]["missing_image"] == 1 and train["bad"]["bad_json"] == 1
    assert {(r["line"], r["kind"]) for r in train["first_bad"]} == {(3, "missing_image"), (4, "bad_json")}
    assert manifest["sizes"] == {"vit_image_size": 56, "sd_image_size": 64}
    shards = manifest["splits"]["train"]
    assert [s["file"] for s in shards] == ["train/part-00000.parquet", "train/part-00001.parquet",
                                           "train/part-00002.parquet"]
    assert sum(len(s["frames"]) for s in shards) == STORIES + 1
    stories = split_stories(config, "train")
    assert isinstance(stories, PreparedStories) and len(stories) == STORIES + 1
    assert [stories.load(i).key for i in range(3)] == ["0", "wide", "1"]


@pytest.mark.parametrize("stage", ["detokenizer_pretrain", "story_instruct", "detokenizer_adapt"])
def test_every_stage_reads_exactly_the_released_forms_samples(released, prepared, stage):
    config, tokenizer = released
    prepared_config, _ = prepared
    tokenizer = None if stage == "detokenizer_pretrain" else tokenizer
    want, want_report = stage_dataset(stage, config, "train", tokenizer)
    got, got_report = stage_dataset(stage, prepared_config, "train", tokenizer)
    want_rows, got_rows = want.take_all(), got.take_all()
    assert len(got_rows) == len(want_rows) > 0
    for expected, row in zip(want_rows, got_rows):
        assert expected.keys() == row.keys()
        for name in expected:
            if name in ("pass", "group", "index"):  # bad stories left out move the group boundaries
                continue
            assert np.array_equal(np.asarray(expected[name]), np.asarray(row[name])), (stage, name)
    assert want_report.summary()["bad"]["missing_image"] == 1 and got_report.summary()["bad"]["missing_image"] == 0
    if stage == "detokenizer_pretrain":
        wide = [row for row in got_rows if row["key"] == "wide" and row["frame"] == 1]
        assert wide[0]["add_time_ids"].tolist() == [WIDE[1], WIDE[0], 0, 6, 64, 64]


def test_a_training_stream_reads_the_prepared_form(prepared, ray_cluster):
    config, _ = prepared
    stream, report = stage_stream("detokenizer_pretrain", config)
    batch, position = next(stream.batches(0, 1, 4, FrameCollate(), {}))
    assert batch["sd_pixels"].shape == (4, 3, 64, 64) and position["index"] == 4


def test_an_incomplete_or_other_preset_prepared_dataset_is_refused(prepared, s3):
    config, manifest = prepared
    elsewhere = f"s3://{s3.bucket}/toy-prepared-incomplete"
    storage.write_bytes(f"{elsewhere}/train/part-00000.parquet", b"half")
    with pytest.raises(FileNotFoundError, match="no prepared.json: not a complete prepared dataset"):
        split_stories(config.model_copy(update={"data": config.data.model_copy(update={"prepared": elsewhere})}), "train")
    other = {**manifest, "sizes": {"vit_image_size": 448, "sd_image_size": 1024}}
    storage.write_bytes(f"{elsewhere}/{PREPARED_MANIFEST}", json.dumps(other).encode())
    with pytest.raises(ValueError, match=r"prepared for frame sizes .*1024.* prepare it again"):
        split_stories(config.model_copy(update={"data": config.data.model_copy(update={"prepared": elsewhere})}), "train")
    with pytest.raises(ValueError, match="holds no test split"):
        split_stories(config, "test")
