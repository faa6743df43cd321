"""The test split's stories, decoded: what every evaluation opens with and compares against."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from seedstory.config import SeedStoryConfig
from seedstory.data.sources import expand_jsonl, read_story_lines
from seedstory.data.stories import load_story


@dataclass(frozen=True)
class HeldOutStory:
    key: str
    captions: list[str]
    frames: list[Image.Image]

    def truth(self, segment: int) -> Image.Image:
        """The true frame of generated segment ``segment`` (frame 0 is the opening); a story longer
        than its data is compared with its last true frame."""
        return self.frames[min(segment + 1, len(self.frames) - 1)]


def held_out_stories(config: SeedStoryConfig, count: int) -> list[HeldOutStory]:
    """The first ``count`` stories of the test split, decoded; fewer is an error (the figures need them)."""
    lines = list(read_story_lines(expand_jsonl(config.data.test_jsonl)))
    if len(lines) < count:
        raise ValueError(f"the test split holds {len(lines)} stories, fewer than the {count} asked for: "
                         "write a bigger toy world (data.toy.stories) or ask for fewer")
    stories = [load_story(line, config.data.image_root) for line in lines[:count]]
    return [HeldOutStory(s.key, list(s.captions), list(s.images)) for s in stories]
