"""Find JSONL files (URIs, comma lists, globs; local or s3://) and read their lines with numbers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from seedstory.storage import filesystem_for, is_remote

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class StoryLine:
    file: str
    line: int
    text: str


def split_uris(uris: str | Iterable[str]) -> list[str]:
    """``"a.jsonl,b.jsonl"`` or a list of such strings -> one URI each."""
    items = [uris] if isinstance(uris, str) else list(uris)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _with_scheme(uri: str, path: str) -> str:
    return f"s3://{path}" if is_remote(uri) else path


def expand_jsonl(uris: str | Iterable[str]) -> list[str]:
    """Every file the URIs name, globs expanded and sorted; a pattern matching nothing is an error."""
    files: list[str] = []
    for uri in split_uris(uris):
        fs, path = filesystem_for(uri)
        if any(c in path for c in GLOB_CHARS):
            matches = sorted(fs.glob(path))
            if not matches:
                raise FileNotFoundError(f"no JSONL files match {uri}")
            files.extend(_with_scheme(uri, m) for m in matches)
        elif fs.isfile(path):
            files.append(uri)
        else:
            raise FileNotFoundError(f"JSONL file not found: {uri}")
    if not files:
        raise ValueError("no JSONL files given")
    return files


def read_story_lines(files: Iterable[str]) -> Iterator[StoryLine]:
    """Each non-blank line of each file with its 1-based number; undecodable bytes are kept
    (replaced) so that the line is reported as bad JSON rather than failing the whole file."""
    for file in files:
        fs, path = filesystem_for(file)
        text = fs.cat_file(path).decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield StoryLine(file, number, line)
