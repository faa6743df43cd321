"""A served story's record, saved: the models it names are the ones that made it."""

from __future__ import annotations

import json

from PIL import Image

from seedstory.generation.storybook import png_bytes, read_storybook
from seedstory.serving.story_stream import StoryRecord

MLLM = {"model_name": "story-mllm", "version": "4", "uri": "s3://b/mllm-4"}
OLD, NEW = ({"model_name": "story-detokenizer", "version": v, "uri": f"s3://b/detok-{v}"} for v in ("7", "8"))


def record(painters: list[dict]) -> StoryRecord:
    story = StoryRecord(id="abc", opening="A fox.", opening_image=None,
                        header={"models": {"mllm": MLLM, "detokenizer": OLD}, "config": {"story": {}}})
    for index, painter in enumerate(painters):
        story.texts[index] = f"text {index}"
        story.pngs[index] = png_bytes(Image.new("RGB", (8, 8), (index * 40, 0, 0)))
        story.painted_by[index] = painter
    return story


def test_a_story_names_the_de_tokenizer_that_painted_it_not_the_one_announced(tmp_path):
    """The announced version is what one painter replica held when the story began; another painted it."""
    folder = record([NEW, NEW, NEW]).save("completed", str(tmp_path / "story"))
    manifest, images = read_storybook(folder)
    assert manifest["models"] == {"mllm": MLLM, "detokenizer": NEW}
    assert all("detokenizer" not in segment for segment in manifest["segments"]) and len(images) == 3


def test_a_de_tokenizer_changed_mid_story_is_named_for_each_picture(tmp_path):
    folder = record([OLD, OLD, NEW, OLD]).save("completed", str(tmp_path / "story"))
    manifest = json.loads((tmp_path / "story" / "story.json").read_text())
    assert manifest["models"]["detokenizer"] == [OLD, NEW]
    assert [segment["detokenizer"]["version"] for segment in manifest["segments"]] == ["7", "7", "8", "7"]
    page = (tmp_path / "story" / "index.html").read_text()
    assert "detokenizer story-detokenizer 7, detokenizer story-detokenizer 8" in page
    assert folder == str(tmp_path / "story")
