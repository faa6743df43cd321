"""Write the toy world in the released StoryStream format: train/val/test JSONL + an image root."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from seedstory.config.data import ToyWorldConfig
from seedstory.data.images import encode_image
from seedstory.data.records import StoryRecord
from seedstory.data.toyworld.captions import write_caption
from seedstory.data.toyworld.render import render_frame
from seedstory.data.toyworld.world import FrameState, story_states
from seedstory.storage import filesystem_for, is_remote, join

SPLITS = ("train", "val", "test")
TEXT_FILE = "text.jsonl"
SECONDS_PER_FRAME = 4.25


@dataclass(frozen=True)
class ToyStory:
    record: StoryRecord
    states: tuple[FrameState, ...]


def _keyframe_name(story_id: int, frame: int) -> str:
    """A path shaped like the release's ``000258/000258_keyframe_0-19-49-688.jpg``."""
    ms = int(round((frame + 1) * SECONDS_PER_FRAME * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{story_id:06d}/{story_id:06d}_keyframe_{h}-{m:02d}-{s:02d}-{ms:03d}"


def toy_story(config: ToyWorldConfig, index: int) -> ToyStory:
    """Story ``index`` of the world seeded by ``config.seed``; independent of every other story."""
    rng = np.random.default_rng([config.seed, index])
    frames = int(rng.integers(config.min_frames, config.max_frames + 1))
    events = story_states(rng, frames)
    captions = tuple(write_caption(event, state, rng) for event, state in events)
    images = tuple(f"{_keyframe_name(index, i)}.{config.image_format}" for i in range(frames))
    record = StoryRecord(images=images, captions=captions, id=index, orders=tuple(range(frames)))
    return ToyStory(record, tuple(state for _, state in events))


def split_of(config: ToyWorldConfig, index: int) -> str:
    """Stories are dealt to splits by index so that growing ``stories`` never reshuffles them."""
    position = (index * 0.6180339887498949) % 1.0
    if position < config.val_fraction:
        return "val"
    if position < config.val_fraction + config.test_fraction:
        return "test"
    return "train"


def text_story_indices(config: ToyWorldConfig) -> list[int]:
    """The ``text_stories`` stories past ``stories`` that the split rule deals to train."""
    indices, index = [], config.stories
    while len(indices) < config.text_stories:
        if split_of(config, index) == "train":
            indices.append(index)
        index += 1
    return indices


def write_toy_world(config: ToyWorldConfig, uri: str | None = None) -> dict:
    """Write ``config.stories`` stories under ``uri`` (default ``config.uri``); returns a summary.

    Layout: ``{uri}/train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``{uri}/images/...``, and with
    ``text_stories`` the text corpus ``{uri}/text.jsonl`` (``{"id", "captions"}`` per line).
    """
    uri = uri or config.uri
    fs, root = filesystem_for(uri)
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    frames = 0
    for index in range(config.stories):
        story = toy_story(config, index)
        lines[split_of(config, index)].append(story.record.to_line())
        blobs = {join(root, "images", path): encode_image(render_frame(state, config.image_size), f".{config.image_format}")
                 for path, state in zip(story.record.images, story.states)}
        if not is_remote(uri):
            for path in blobs:
                fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe(blobs)
        frames += len(blobs)
    for split, split_lines in lines.items():
        fs.pipe_file(join(root, f"{split}.jsonl"), ("\n".join(split_lines) + "\n").encode() if split_lines else b"")
    summary = {"uri": uri, "stories": config.stories, "frames": frames, "seed": config.seed,
               "splits": {split: len(split_lines) for split, split_lines in lines.items()},
               "jsonl": {split: join(uri, f"{split}.jsonl") for split in SPLITS}, "image_root": join(uri, "images")}
    if config.text_stories:
        text = "".join(json.dumps({"id": index, "captions": list(toy_story(config, index).record.captions)}) + "\n"
                       for index in text_story_indices(config))
        fs.pipe_file(join(root, TEXT_FILE), text.encode())
        summary["text"] = {"stories": config.text_stories, "jsonl": join(uri, TEXT_FILE)}
    fs.pipe_file(join(root, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary
