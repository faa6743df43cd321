"""A finished story as a folder a person can open: ``story.json``, one PNG per segment, ``index.html``.

The folder is the same locally and on object storage. ``story.json`` is written last, so its
presence means the folder is complete. ``index.html`` is self-contained (pictures inlined) so it
reads the same opened from disk, downloaded from a bucket or attached to an MLflow run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from PIL import Image

from seedstory.data.images import decode_image
from seedstory.storage import filesystem_for, join, read_bytes, remove_file, write_bytes

STORY_FILE = "story.json"
PAGE_FILE = "index.html"


def image_name(index: int) -> str:
    return f"{index:03d}.png"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Storybook:
    """``models`` names each model the story was made with; a model that changed mid-story (a served story's
    de-tokenizer, across a re-deploy) is a list, and then ``painted_by`` says which one painted each picture."""

    opening: str
    opening_image: Image.Image | None
    texts: list[str]
    images: list[Image.Image]
    outcome: str
    models: dict[str, Any]
    config: dict[str, Any]
    stats: dict[str, Any]
    painted_by: list[dict[str, Any]] | None = None

    def manifest(self) -> dict[str, Any]:
        segments = [{"index": i, "text": text, "image": image_name(i)} for i, text in enumerate(self.texts)]
        for segment, painter in zip(segments, self.painted_by or []):
            segment["detokenizer"] = painter
        return {
            "opening": {"text": self.opening, "image": self.opening_image is not None},
            "segments": segments,
            "outcome": self.outcome, "models": self.models, "config": self.config, "stats": self.stats,
        }

    def page(self) -> str:
        rows = [_row("opening", self.opening, self.opening_image)]
        rows += [_row(f"segment {i}", text, image) for i, (text, image) in enumerate(zip(self.texts, self.images))]
        versions = ", ".join(_version(name, info) for name, models in self.models.items()
                             for info in (models if isinstance(models, list) else [models]))
        return PAGE.format(title=html.escape(self.opening[:80]), rows="\n".join(rows),
                           outcome=html.escape(self.outcome), versions=html.escape(versions))


def _version(name: str, info: dict[str, Any]) -> str:
    return " ".join(str(part) for part in (name, info.get("model_name"), info.get("version") or info.get("uri")) if part)


def _row(label: str, text: str, image: Image.Image | None) -> str:
    picture = (f'<img alt="{html.escape(label)}" src="data:image/png;base64,'
               f'{base64.b64encode(png_bytes(image)).decode()}">' if image is not None else "")
    return (f'<section class="segment"><div class="picture">{picture}</div>'
            f'<p class="text"><span class="label">{html.escape(label)}</span>{html.escape(text) or "&nbsp;"}</p>'
            "</section>")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: Georgia, serif; max-width: 56rem; margin: 2rem auto; background: #faf7f0; color: #222; }}
.segment {{ display: flex; gap: 1.5rem; align-items: center; margin: 1rem 0; padding: 1rem;
           background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; }}
.picture {{ flex: 0 0 256px; min-height: 1px; }}
.picture img {{ width: 256px; height: 256px; image-rendering: pixelated; border-radius: 4px; }}
.text {{ font-size: 1.2rem; line-height: 1.5; }}
.label {{ display: block; font: 0.75rem sans-serif; color: #888; text-transform: uppercase; }}
footer {{ font: 0.8rem sans-serif; color: #888; }}
</style></head>
<body>
<h1>{title}</h1>
{rows}
<footer>outcome: {outcome} &middot; models: {versions}</footer>
</body></html>
"""


def save_storybook(book: Storybook, out: str) -> str:
    """Write the folder under ``out`` (local or ``s3://``); returns the page's location. A story written over
    another removes the old ``story.json`` first and the old pictures it has no segment for before its own
    ``story.json``, so a folder with a manifest never mixes two stories."""
    remove_file(join(out, STORY_FILE))
    for index, image in enumerate(book.images):
        write_bytes(join(out, image_name(index)), png_bytes(image))
    write_bytes(join(out, PAGE_FILE), book.page().encode())
    fs, folder = filesystem_for(out)
    for picture in fs.glob(f"{folder}/[0-9][0-9][0-9].png"):
        if int(posixpath.basename(picture)[:3]) >= len(book.images):
            fs.rm_file(picture)
    write_bytes(join(out, STORY_FILE), json.dumps(book.manifest(), indent=2).encode())
    return join(out, PAGE_FILE)


def read_storybook(folder: str) -> tuple[dict[str, Any], list[Image.Image]]:
    """A written folder back: its ``story.json`` and every segment's picture, in order."""
    manifest = json.loads(read_bytes(join(folder, STORY_FILE)))
    return manifest, [decode_image(read_bytes(join(folder, s["image"]))) for s in manifest["segments"]]
