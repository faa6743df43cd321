"""A story as text: its captions, read from a released record or a text-only one, bad lines named by kind."""

import json

import pytest

from seedstory.data.badrecords import BadKind, BadRecordError
from seedstory.data.records import parse_captions


def test_captions_are_read_with_or_without_pictures():
    assert parse_captions(json.dumps({"captions": ["One.", "Two."]})) == ("One.", "Two.")
    assert parse_captions(json.dumps({"id": 3, "images": ["a.jpg"], "captions": ["One."]})) == ("One.",)


@pytest.mark.parametrize(("line", "kind", "detail"), [
    ("{\"captions\": [", BadKind.BAD_JSON, "not JSON"),
    (json.dumps(["One."]), BadKind.BAD_JSON, "a story must be a JSON object, got list"),
    (json.dumps({"text": "One."}), BadKind.BAD_JSON, "'captions' must be a list of strings"),
    (json.dumps({"captions": []}), BadKind.COUNT_MISMATCH, "a story with no captions"),
    (json.dumps({"captions": ["One.", " "]}), BadKind.EMPTY_CAPTION, "caption 1 is empty"),
])
def test_a_line_that_is_not_a_story_says_why(line, kind, detail):
    with pytest.raises(BadRecordError, match=detail) as error:
        parse_captions(line)
    assert error.value.kind == kind
