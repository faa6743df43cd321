"""The HTTP contract: what a story request may hold, the errors that name the field, the event lines.

Everything here runs in the ingress before a model is touched: a request that fails any check
costs no writer or painter time. What needs the tokenizer (the opening's length in tokens) the
writer checks, and the ingress answers it with the same 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from seedstory.config.generation import SEED_LIMIT
from seedstory.config.serve import ServeConfig
from seedstory.data.badrecords import BadRecordError
from seedstory.data.images import decode_image

NDJSON = "application/x-ndjson"
STORY_ID = re.compile(r"^[0-9a-f]{32}$")
DATA_URL = re.compile(r"^data:image/[a-z+.-]+;base64,", re.IGNORECASE)


class ApiError(Exception):
    """A 4xx/5xx with a JSON body ``{"error": {"field": ..., "problem": ...}}``."""

    def __init__(self, status: int, field: str | None, problem: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.status = status
        self.field = field
        self.problem = problem
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "problem": self.problem}}


class _StoryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr
    image: StrictStr | None = None
    segments: StrictInt
    seed: StrictInt | None = Field(None, ge=0, lt=SEED_LIMIT)


@dataclass(frozen=True)
class StoryRequest:
    text: str
    image: Image.Image | None
    segments: int
    seed: int | None


def parse_story_request(body: bytes, limits: ServeConfig) -> StoryRequest:
    """The request, checked against ``limits``, or the ``ApiError`` that names what is wrong."""
    if len(body) > limits.max_body_bytes:
        raise ApiError(413, None, f"body of {len(body)} bytes is over serve.max_body_bytes ({limits.max_body_bytes})")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # ValueError: not JSON, not UTF-8, an integer over int's digit limit
        raise ApiError(400, None, f"body is not JSON that can be read: {err}") from None
    if not isinstance(data, dict):
        raise ApiError(400, None, f"body must be a JSON object, got {type(data).__name__}")
    try:
        fields = _StoryBody.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ApiError(422, ".".join(str(part) for part in first["loc"]) or None, first["msg"]) from None
    text = fields.text.strip()
    if not text:
        raise ApiError(422, "text", "empty; a story opens with a sentence")
    if len(text) > limits.max_text_chars:
        raise ApiError(422, "text", f"{len(text)} characters, over serve.max_text_chars ({limits.max_text_chars})")
    if not 1 <= fields.segments <= limits.max_segments:
        raise ApiError(422, "segments", f"{fields.segments} is outside [1, {limits.max_segments}]")
    image = decode_image_field(fields.image, limits) if fields.image else None
    return StoryRequest(text=text, image=image, segments=fields.segments, seed=fields.seed)


def decode_image_field(value: str, limits: ServeConfig) -> Image.Image:
    """A PNG or JPEG as a data URL or bare base64, within the configured bytes and sides."""
    payload = DATA_URL.sub("", value.strip(), count=1)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(422, "image", f"not base64: {err}") from None
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, "image", f"{len(data)} bytes, over serve.max_image_bytes ({limits.max_image_bytes})")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            kind = probe.format
    except Image.DecompressionBombError as err:
        raise ApiError(413, "image", str(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ApiError(422, "image", f"not a PNG or JPEG: {err}") from None
    if kind not in ("PNG", "JPEG"):
        raise ApiError(422, "image", f"a {kind} image; send a PNG or JPEG")
    if max(width, height) > limits.max_image_side:
        raise ApiError(413, "image", f"{width}x{height} pixels, over serve.max_image_side ({limits.max_image_side})")
    try:
        return decode_image(data)
    except BadRecordError as err:
        raise ApiError(422, "image", err.detail) from None


def event_line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def png_base64(data: bytes) -> str:
    return base64.b64encode(data).decode()

