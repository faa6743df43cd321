"""A split's stories, in either form every stage reads: the released one (JSONL lines + an image root)
or the prepared one (``jobs/prepare_data.py``: sharded Parquet, frames at the preset's sizes).

Both give each story by its index in file order, with where it sits (file and line, or file and
row) for the bad-record ledger, and its frame count without fetching a picture (to size passes).
A prepared story is one Parquet row group, so a worker reads exactly the stories it is dealt.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import pyarrow.parquet as pq

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.config.model import ModelConfig
from seedstory.data.badrecords import BadRecordError
from seedstory.data.images import decode_image
from seedstory.data.pixels import PreparedFrame
from seedstory.data.records import StoryRecord, parse_story
from seedstory.data.sources import StoryLine, expand_jsonl, read_story_lines
from seedstory.data.stories import Story, load_story

Split = Literal["train", "val", "test"]
PREPARED_MANIFEST = "prepared.json"


class StorySet(ABC):
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def where(self, index: int) -> tuple[str, int]:
        """(file, line or row, 1-based) of story ``index``: what the bad-record ledger names."""

    @abstractmethod
    def frames(self, index: int) -> int:
        """Story ``index``'s frame count, read without its pictures (0 when its record is unusable)."""

    @abstractmethod
    def load(self, index: int) -> Story:
        """Story ``index`` with its pictures decoded, or BadRecordError saying why it cannot be used."""

    @abstractmethod
    def describe(self) -> str:
        """Where the stories come from, for error messages."""


@dataclass
class ReleasedStories(StorySet):
    lines: list[StoryLine]
    image_root: str
    source: str = ""

    def __len__(self) -> int:
        return len(self.lines)

    def where(self, index: int) -> tuple[str, int]:
        return self.lines[index].file, self.lines[index].line

    def frames(self, index: int) -> int:
        try:
            return len(parse_story(self.lines[index].text).images)
        except BadRecordError:
            return 0

    def load(self, index: int) -> Story:
        return load_story(self.lines[index], self.image_root)

    def describe(self) -> str:
        return self.source


@dataclass
class PreparedStories(StorySet):
    """One split of a prepared dataset: ``files`` with ``rows`` stories each (one row group per story)."""

    root: str
    files: list[str]
    rows: list[int]
    frame_counts: list[int]
    _handles: dict[str, pq.ParquetFile] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frame_counts)

    def _locate(self, index: int) -> tuple[str, int]:
        for file, rows in zip(self.files, self.rows):
            if index < rows:
                return file, index
            index -= rows
        raise IndexError(f"{self.root} holds {len(self)} stories, not {index + 1}")

    def where(self, index: int) -> tuple[str, int]:
        file, row = self._locate(index)
        return storage.join(self.root, file), row + 1

    def frames(self, index: int) -> int:
        return self.frame_counts[index]

    def load(self, index: int) -> Story:
        file, row = self._locate(index)
        if file not in self._handles:
            fs, path = storage.filesystem_for(storage.join(self.root, file))
            self._handles[file] = pq.ParquetFile(fs.open(path, "rb"))
        story = self._handles[file].read_row_group(row).to_pylist()[0]
        frames = []
        for index_in_story, (vit, sd, time_ids) in enumerate(zip(story["vit"], story["sd"], story["time_ids"])):
            try:
                frames.append(PreparedFrame(decode_image(vit), decode_image(sd), tuple(time_ids)))
            except BadRecordError as err:
                raise BadRecordError(err.kind, f"frame {index_in_story}: {err.detail}") from None
        record = StoryRecord(tuple(story["images"]), tuple(story["captions"]))
        return Story(story["key"], record, tuple(frames))

    def describe(self) -> str:
        return self.root

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # open files stay with the process that opened them


def split_jsonl(config: SeedStoryConfig, split: Split) -> list[str]:
    return {"train": config.data.train_jsonl, "val": config.data.val_jsonl, "test": config.data.test_jsonl}[split]


def read_prepared_manifest(root: str) -> dict:
    try:
        return json.loads(storage.read_bytes(storage.join(root, PREPARED_MANIFEST)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} holds no {PREPARED_MANIFEST}: not a complete prepared dataset "
                                "(jobs/prepare_data.py writes it last)") from None


def prepared_sizes(model: ModelConfig) -> dict[str, int]:
    return {"vit_image_size": model.vit.image_size, "sd_image_size": model.sd_image_size}


def split_stories(config: SeedStoryConfig, split: Split) -> StorySet:
    """``split`` of ``data.prepared`` when it is set, else of the released JSONL files and image root."""
    root = config.data.prepared
    if root is None:
        files = split_jsonl(config, split)
        lines = list(read_story_lines(expand_jsonl(files)))
        return ReleasedStories(lines, config.data.image_root, source=f"the {split} split ({', '.join(files)})")
    manifest = read_prepared_manifest(root)
    if manifest["sizes"] != prepared_sizes(config.model):
        raise ValueError(f"{root} was prepared for frame sizes {manifest['sizes']}, the {config.model.preset} preset "
                         f"takes {prepared_sizes(config.model)}: prepare it again with this preset")
    if split not in manifest["splits"]:
        raise ValueError(f"{root} holds no {split} split (it has {', '.join(manifest['splits'])})")
    shards = manifest["splits"][split]
    return PreparedStories(root, files=[s["file"] for s in shards], rows=[len(s["frames"]) for s in shards],
                           frame_counts=[count for s in shards for count in s["frames"]])
