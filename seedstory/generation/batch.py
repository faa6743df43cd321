"""Many stories with Ray Data: one model load per actor, one storybook folder per prompt.

A prompts file is JSON Lines, one story a line: ``{"text": str, "image"?: URI, "segments"?: int,
"seed"?: int, "id"?: str}``; a relative ``image`` is relative to the prompts file's folder. The
lines are read on the driver (they are small) so every bad prompt keeps its line number. A bad
prompt (broken JSON, no text, a reused id, an unreadable image, segments outside [1, max_segments])
is counted and skipped; anything else is a broken pipeline and fails the job.

A local path (the output folder, a prompt's image) is a path on the driver's machine, so when any is
local the actor pool runs on the driver's node: on a cluster of many machines, storybooks written
anywhere else would land on whichever node's disk an actor happened to run on.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from seedstory.config import SeedStoryConfig
from seedstory.config.generation import SEED_LIMIT
from seedstory.generation.pipeline import StoryInputError, StoryModels, StoryPipeline, read_image
from seedstory.generation.storybook import save_storybook
from seedstory.storage import is_remote, join, read_bytes
from seedstory.training.registry import ResolvedSource

SUMMARY_FILE = "summary.json"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Prompt:
    line: int
    id: str
    text: str
    image: str | None
    segments: int
    seed: int | None


PROMPT_FIELDS = ("line", "id", "text", "image", "segments", "seed")


def read_prompt_lines(uri: str) -> list[dict[str, Any]]:
    """``{"line": n, "text": raw bytes}`` for every non-blank line (1-based numbers); each line is decoded
    alone, so one that is not UTF-8 is one bad prompt."""
    lines = read_bytes(uri).splitlines()
    return [{"line": n, "text": text} for n, text in enumerate(lines, start=1) if text.strip()]


def parse_prompt(raw: bytes, line: int, base: str, default_segments: int, max_segments: int) -> Prompt:
    """One prompt line; ``StoryInputError`` names what is wrong with it."""
    try:
        item = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise StoryInputError(f"not UTF-8: byte {err.start + 1} is {raw[err.start:err.start + 1]!r}") from None
    except json.JSONDecodeError as err:
        raise StoryInputError(f"not JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(item, dict):
        raise StoryInputError(f"a prompt is a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - {"id", "text", "image", "segments", "seed"})
    if unknown:
        raise StoryInputError(f"unknown field(s) {', '.join(unknown)}")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise StoryInputError("text: missing or empty")
    segments = item.get("segments", default_segments)
    if not isinstance(segments, int) or isinstance(segments, bool) or not 1 <= segments <= max_segments:
        raise StoryInputError(f"segments: must be an integer in [1, {max_segments}], got {segments!r}")
    seed = item.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT):
        raise StoryInputError(f"seed: must be an integer in [0, {SEED_LIMIT}), got {seed!r}")
    story_id = f"line-{line:06d}" if item.get("id") is None else str(item["id"])
    if not SAFE_ID.match(story_id):
        raise StoryInputError(f"id: {story_id!r} is not a folder name (letters, digits, '.', '_', '-')")
    if story_id == SUMMARY_FILE:
        raise StoryInputError(f"id: {story_id!r} is the name of the run's summary")
    image = item.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise StoryInputError(f"image: must be a path or URI, got {image!r}")
    if image and not is_remote(image) and not posixpath.isabs(image):
        image = join(base, image)
    return Prompt(line, story_id, text, image, segments, seed)


def prompts_folder(uri: str) -> str:
    """The folder a prompts file's relative images are read from; a local one made absolute on the driver,
    so that every actor reads the same folder whatever its working directory."""
    if is_remote(uri):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


def output_folder(uri: str) -> str:
    """Where the storybooks go; a local one made absolute on the driver, as ``prompts_folder`` is."""
    return uri if is_remote(uri) else os.path.abspath(uri)


def prepare_prompts(lines: list[dict[str, Any]], base: str, default_segments: int, max_segments: int
                    ) -> tuple[list[Prompt], list[dict[str, Any]]]:
    """Parse every line on the driver: the valid prompts, and each bad one with its line and reason.

    A second prompt with an id already taken is bad: its story would overwrite the first one's.
    """
    prompts: list[Prompt] = []
    bad: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for line in lines:
        try:
            prompt = parse_prompt(line["text"], line["line"], base, default_segments, max_segments)
            if prompt.id in first_line:
                raise StoryInputError(f"id: {prompt.id!r} is already used by line {first_line[prompt.id]}")
        except StoryInputError as err:
            bad.append({"line": line["line"], "detail": str(err)})
            continue
        first_line[prompt.id] = line["line"]
        prompts.append(prompt)
    return prompts, bad


class StoryWriter:
    """A Ray Data actor: loads the models once, then writes each prompt's storybook under ``out``."""

    def __init__(self, config: dict, sources: dict[str, dict], out: str) -> None:
        self.config = SeedStoryConfig.model_validate(config)
        models = StoryModels.load({name: ResolvedSource(**source) for name, source in sources.items()})
        self.pipeline = StoryPipeline(models, self.config)
        self.out = out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: dict[str, list] = {key: [] for key in ("line", "id", "detail", "storybook", "segments", "outcome")}
        for values in zip(*(batch[name] for name in PROMPT_FIELDS)):
            prompt = Prompt(**{name: _plain(value) for name, value in zip(PROMPT_FIELDS, values)})
            try:
                image = read_image(prompt.image) if prompt.image else None
                story = self.pipeline.write(prompt.text, image, segments=prompt.segments, seed=prompt.seed)
            except StoryInputError as err:
                row = {"line": prompt.line, "id": prompt.id, "detail": str(err), "storybook": "", "segments": 0,
                       "outcome": ""}
            else:
                page = save_storybook(self.pipeline.storybook(story), join(self.out, prompt.id))
                row = {"line": prompt.line, "id": prompt.id, "detail": "", "storybook": page,
                       "segments": len(story.segments), "outcome": story.outcome.value}
            for key, value in row.items():
                rows[key].append(value)
        return rows


def _plain(value: Any) -> Any:
    """numpy scalars and NaN (Ray Data's missing values) back to plain Python."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def summarize(results: list[dict[str, Any]], bad: list[dict[str, Any]], prompts_uri: str,
              models: dict[str, Any]) -> dict[str, Any]:
    """Counts, every bad prompt with its line and reason, and where each story went."""
    written = sorted((r for r in results if not r["detail"]), key=lambda r: r["line"])
    bad = sorted([*bad, *({"line": r["line"], "detail": r["detail"]} for r in results if r["detail"])],
                 key=lambda r: r["line"])
    return {
        "prompts": prompts_uri, "models": models, "stories": len(written), "bad_prompts": len(bad), "bad": bad,
        "written": [{key: r[key] for key in ("line", "id", "storybook", "segments", "outcome")} for r in written],
    }


def actor_placement(out: str, prompts: list[Prompt], actors: int, cpus_per_actor: float) -> dict[str, Any]:
    """Ray options that keep the actor pool on the driver's node when ``out`` or a prompt's image is a local
    path (none when everything is in object storage); raises when that node cannot hold the pool, which
    would otherwise wait for CPUs that never come (a cluster's head often has none for tasks)."""
    local = [uri for uri in (out, *(p.image for p in prompts if p.image)) if not is_remote(uri)]
    if not local:
        return {}
    node = ray.get_runtime_context().get_node_id()
    cpus = next(n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node)
    if actors * cpus_per_actor > cpus:
        raise ValueError(f"{local[0]} is a local path, so the story writers must run on the driver's node, whose "
                         f"{cpus:g} CPU(s) cannot hold {actors} actors of {cpus_per_actor:g}: use s3:// paths to "
                         "write on the whole cluster, or fewer actors")
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def write_storybooks(config: SeedStoryConfig, prompts: list[Prompt], sources: dict[str, ResolvedSource], out: str,
                     actors: int = 1, cpus_per_actor: float = 1.0) -> list[dict[str, Any]]:
    """Each prompt's storybook under ``out/<id>/`` from a Ray Data actor pool: a row per prompt
    (``detail`` names why a prompt could not be written)."""
    if not prompts:
        return []
    size = min(actors, len(prompts))
    stories = ray.data.from_items([asdict(p) for p in prompts]).map_batches(
        StoryWriter, batch_size=1, num_cpus=cpus_per_actor, compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"config": config.model_dump(mode="json"), "out": out,
                               "sources": {name: asdict(source) for name, source in sources.items()}},
        **actor_placement(out, prompts, size, cpus_per_actor),
    )
    return stories.take_all()
