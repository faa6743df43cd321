"""Turn one JSONL line into a usable story, or say exactly why it is not one."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from seedstory.data.badrecords import BadKind, BadRecord, BadRecordError, BadRecordLedger
from seedstory.data.images import decode_image
from seedstory.data.records import StoryRecord, parse_story
from seedstory.data.sources import StoryLine, expand_jsonl, read_story_lines
from seedstory.storage import filesystem_for, join


@dataclass(frozen=True)
class Story:
    """A valid story with its pictures decoded: checking an image is decoding it, so every sample is
    cut from these pictures instead of decoding the bytes a second time."""

    key: str
    record: StoryRecord
    images: tuple[Image.Image, ...]

    @property
    def captions(self) -> tuple[str, ...]:
        return self.record.captions


def fetch_frames(image_root: str, paths: tuple[str, ...]) -> dict[str, bytes | Exception]:
    """All of a story's image bytes in one concurrent request batch (s3fs fetches in parallel)."""
    fs, root = filesystem_for(image_root)
    full = [join(root, p) for p in paths]
    fetched = fs.cat(sorted(set(full)), on_error="return")
    return {p: fetched[f] for p, f in zip(paths, full)}


def load_story(line: StoryLine, image_root: str) -> Story:
    """Parse, fetch and decode a story; the first problem in frame order raises BadRecordError.

    Within a frame the caption is checked before the image.
    """
    record = parse_story(line.text)
    fetched = fetch_frames(image_root, record.images)
    images = []
    for index, (path, caption) in enumerate(zip(record.images, record.captions)):
        if not caption.strip():
            raise BadRecordError(BadKind.EMPTY_CAPTION, f"frame {index} has an empty caption")
        data = fetched[path]
        if isinstance(data, FileNotFoundError):
            raise BadRecordError(BadKind.MISSING_IMAGE, f"frame {index}: {path} not found under {image_root}")
        if isinstance(data, Exception):
            raise data
        try:
            images.append(decode_image(data))
        except BadRecordError as err:
            raise BadRecordError(BadKind.CORRUPT_IMAGE, f"frame {index}: {path}: {err.detail}") from None
    return Story(record.key(line.file, line.line), record, tuple(images))


def story_opening(jsonl: str | list[str], image_root: str, index: int = 0) -> tuple[str, Image.Image]:
    """The first caption and frame of story ``index`` (in file order) of a StoryStream dataset."""
    lines = read_story_lines(expand_jsonl(jsonl))
    line = next((line for i, line in enumerate(lines) if i == index), None)
    if line is None:
        raise IndexError(f"{jsonl} holds fewer than {index + 1} stories")
    story = load_story(line, image_root)
    return story.captions[0], story.images[0]


def scan_dataset(jsonl: str | list[str], image_root: str, failure_budget: float) -> BadRecordLedger:
    """Check every story and decode every image, as a user should before a long run."""
    lines = list(read_story_lines(expand_jsonl(jsonl)))
    ledger = BadRecordLedger(total_stories=len(lines), failure_budget=failure_budget)
    for line in lines:
        try:
            story = load_story(line, image_root)
        except BadRecordError as err:
            ledger.record(BadRecord(line.file, line.line, err.kind.value, err.detail))
        else:
            ledger.good(len(story.images))
    return ledger
