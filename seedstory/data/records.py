"""The released StoryStream record: one JSON object per line, one story per object.

``{"id": ..., "images": [...], "captions": [...], "orders": [...]}``; image paths are relative
to an image root, and some released files lack ``id`` and ``orders``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from seedstory.data.badrecords import BadKind, BadRecordError

MAX_FRAMES = 30


@dataclass(frozen=True)
class StoryRecord:
    images: tuple[str, ...]
    captions: tuple[str, ...]
    id: Any = None
    orders: tuple[int, ...] | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        out["images"] = list(self.images)
        out["captions"] = list(self.captions)
        if self.orders is not None:
            out["orders"] = list(self.orders)
        return out

    def to_line(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)

    def key(self, file: str, line: int) -> str:
        """A stable name for the story: its id, or where it sits when the release has none."""
        return str(self.id) if self.id is not None else f"{file}:{line}"


def _string_list(data: dict, name: str) -> tuple[str, ...]:
    value = data.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRecordError(BadKind.BAD_JSON, f"'{name}' must be a list of strings")
    return tuple(value)


def _json_object(text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecordError(BadKind.BAD_JSON, f"not JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(data, dict):
        raise BadRecordError(BadKind.BAD_JSON, f"a story must be a JSON object, got {type(data).__name__}")
    return data


def parse_story(text: str) -> StoryRecord:
    """One JSONL line -> a story whose structure is sound (frames are checked separately)."""
    data = _json_object(text)
    images, captions = _string_list(data, "images"), _string_list(data, "captions")
    orders = data.get("orders")
    if orders is not None and (not isinstance(orders, list) or not all(isinstance(o, int) for o in orders)):
        raise BadRecordError(BadKind.BAD_JSON, "'orders' must be a list of integers")
    if len(images) != len(captions):
        raise BadRecordError(BadKind.COUNT_MISMATCH, f"{len(images)} images but {len(captions)} captions")
    if orders is not None and len(orders) != len(images):
        raise BadRecordError(BadKind.COUNT_MISMATCH, f"{len(images)} images but {len(orders)} orders")
    if not images:
        raise BadRecordError(BadKind.COUNT_MISMATCH, "a story with no frames")
    if len(images) > MAX_FRAMES:
        raise BadRecordError(BadKind.COUNT_MISMATCH, f"{len(images)} frames, more than StoryStream's {MAX_FRAMES}")
    return StoryRecord(images, captions, data.get("id"), tuple(orders) if orders is not None else None)


def parse_captions(text: str) -> tuple[str, ...]:
    """One JSONL line -> its captions, pictures or none: a story as text (``{"captions": [...]}`` is enough)."""
    captions = _string_list(_json_object(text), "captions")
    if not captions:
        raise BadRecordError(BadKind.COUNT_MISMATCH, "a story with no captions")
    empty = next((index for index, caption in enumerate(captions) if not caption.strip()), None)
    if empty is not None:
        raise BadRecordError(BadKind.EMPTY_CAPTION, f"caption {empty} is empty")
    return captions
