"""The request contract, checked before any model is reached: each bad input names its field."""

import base64
import io
import json

import pytest
from PIL import Image

from seedstory.config.serve import ServeConfig
from seedstory.serving.api import ApiError, parse_story_request

LIMITS = ServeConfig(max_segments=8, max_text_chars=40, max_image_bytes=4000, max_image_side=64, max_body_bytes=20000)


def png(size: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def body(**fields) -> bytes:
    return json.dumps({"text": "A fox finds a key.", "segments": 3, **fields}).encode()


def test_a_good_request_with_a_data_url_or_bare_base64_image():
    data = base64.b64encode(png(32)).decode()
    for image in (f"data:image/png;base64,{data}", data):
        request = parse_story_request(body(image=image, seed=5, text="  A fox finds a key. "), LIMITS)
        assert (request.text, request.segments, request.seed) == ("A fox finds a key.", 3, 5)
        assert request.image.size == (32, 32) and request.image.mode == "RGB"
    assert parse_story_request(body(), LIMITS).image is None


@pytest.mark.parametrize("raw, status, field", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b"\xff\xfe{}", 400, None),
    (b"[" * 10_000, 400, None),  # nested past the parser's recursion limit
    (b'{"text": "a", "segments": ' + b"1" * 5000 + b"}", 400, None),  # past int's digit limit
    (json.dumps({"segments": 3}).encode(), 422, "text"),
    (body(text=""), 422, "text"),
    (body(text="   "), 422, "text"),
    (body(text=7), 422, "text"),
    (body(text="x" * 41), 422, "text"),
    (body(segments=0), 422, "segments"),
    (body(segments=9), 422, "segments"),
    (body(segments="3"), 422, "segments"),
    (body(seed=1.5), 422, "seed"),
    (body(seed=-1), 422, "seed"),
    (body(seed=2**32), 422, "seed"),
    (body(colour="red"), 422, "colour"),
    (body(image="%%%not base64%%%"), 422, "image"),
    (body(image=base64.b64encode(b"GIF89a not really").decode()), 422, "image"),
    (body(image=base64.b64encode(png(8, "GIF")).decode()), 422, "image"),
    (body(image=base64.b64encode(png(65)).decode()), 413, "image"),
    (body(image=base64.b64encode(png(8) + b"\0" * 4000).decode()), 413, "image"),
    (body(text="y" * 30_000), 413, None),
])
def test_bad_input_is_refused_with_its_field(raw, status, field):
    with pytest.raises(ApiError) as refused:
        parse_story_request(raw, LIMITS)
    assert (refused.value.status, refused.value.field) == (status, field), refused.value.problem
    assert refused.value.problem
