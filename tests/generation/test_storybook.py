"""The storybook folder: story.json as specified, one PNG per segment, a self-contained page."""

from __future__ import annotations

import json

from PIL import Image

from seedstory.generation.storybook import Storybook, save_storybook


def book(segments: int) -> Storybook:
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (90, 90, 90)]
    return Storybook(opening="Tom <b>waits</b> & sings.", opening_image=Image.new("RGB", (8, 8), (1, 2, 3)),
                     texts=[f"segment {i}" for i in range(segments)],
                     images=[Image.new("RGB", (16, 16), colours[i]) for i in range(segments)],
                     outcome="completed", models={"mllm": {"model_name": "m", "version": "3"}},
                     config={"story": {"segments": segments}}, stats={"overlap": 0.5})


def test_folder_holds_story_json_pngs_and_page(tmp_path):
    page = save_storybook(book(3), str(tmp_path / "story"))
    folder = tmp_path / "story"
    assert page == str(folder / "index.html")
    manifest = json.loads((folder / "story.json").read_text())
    assert manifest["segments"] == [{"index": i, "text": f"segment {i}", "image": f"{i:03d}.png"} for i in range(3)]
    assert manifest["outcome"] == "completed" and manifest["models"]["mllm"]["version"] == "3"
    assert manifest["opening"] == {"text": "Tom <b>waits</b> & sings.", "image": True}
    assert sorted(p.name for p in folder.glob("*.png")) == ["000.png", "001.png", "002.png"]
    assert Image.open(folder / "001.png").getpixel((0, 0)) == (40, 200, 40)


def test_page_is_self_contained_and_escapes_text(tmp_path):
    html = book(2).page()
    assert html.count("<img ") == 3 and html.count('src="data:image/png;base64,') == 3
    assert "Tom &lt;b&gt;waits&lt;/b&gt; &amp; sings." in html and "<b>" not in html
    assert "http" not in html, "a storybook page loads nothing from elsewhere"


def test_a_story_written_over_another_leaves_nothing_of_it(tmp_path):
    folder = tmp_path / "story"
    save_storybook(book(4), str(folder))
    save_storybook(book(2), str(folder))
    assert sorted(p.name for p in folder.glob("*.png")) == ["000.png", "001.png"]
    assert len(json.loads((folder / "story.json").read_text())["segments"]) == 2
