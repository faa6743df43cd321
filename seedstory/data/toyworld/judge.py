"""Read a frame back into facts and score frames against captions and against earlier frames.

Reading is by slot, not by pixel: each pixel is labelled with the nearest palette colour (or
nothing, past ``tolerance``), the scene is the background colour covering most of the frame,
and a character is in a slot when its colour covers enough of the box a character there
occupies. That is exact on
clean frames, survives JPEG, blur and mild noise in generated frames, and reads noise as
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

from seedstory.data.toyworld.captions import FrameFacts, parse_caption
from seedstory.data.toyworld.render import GROUND_Y, HALF_EXTENT, draw_character
from seedstory.data.toyworld.world import CHARACTERS, POSITIONS, SCENES, SIZES

UNLABELLED = -1


@dataclass(frozen=True)
class Judge:
    image_size: int = 64
    tolerance: float = 60.0
    min_scene_share: float = 0.3
    min_area_share: float = 0.5

    @cached_property
    def _palette(self) -> np.ndarray:
        return np.array([c.rgb for c in CHARACTERS] + [s.rgb for s in SCENES], dtype=np.float32)

    @cached_property
    def _areas(self) -> dict[tuple[str, str], int]:
        """Pixel area of each character at each size, measured by painting it once."""
        areas = {}
        for character in CHARACTERS:
            for size in SIZES:
                mask = Image.new("RGB", (self.image_size, self.image_size), (0, 0, 0))
                draw_character(ImageDraw.Draw(mask), character.name, "middle", size, self.image_size)
                areas[character.name, size] = int((np.asarray(mask).sum(axis=2) > 0).sum())
        return areas

    def labels(self, image: Image.Image) -> np.ndarray:
        """Per-pixel palette index (characters first, then scenes), UNLABELLED past tolerance."""
        rgb = image.convert("RGB")
        if rgb.size != (self.image_size, self.image_size):
            rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.float32)
        distances = np.linalg.norm(pixels[:, :, None, :] - self._palette[None, None], axis=-1)
        labels = distances.argmin(axis=-1)
        labels[distances.min(axis=-1) > self.tolerance] = UNLABELLED
        return labels

    def read(self, image: Image.Image) -> FrameFacts:
        labels = self.labels(image)
        n_chars = len(CHARACTERS)
        scene_counts = [(labels == n_chars + i).sum() for i in range(len(SCENES))]
        best = int(np.argmax(scene_counts))
        scene = SCENES[best].name if scene_counts[best] >= self.min_scene_share * labels.size else None
        slot_width = self.image_size / len(POSITIONS)
        reach = HALF_EXTENT["big"] * self.image_size + 1
        rows = slice(max(0, int(GROUND_Y * self.image_size - reach)), int(GROUND_Y * self.image_size + reach) + 1)
        found: dict[str, tuple[str, str, int]] = {}
        for slot, position in enumerate(POSITIONS):
            region = labels[rows, int(round(slot * slot_width)): int(round((slot + 1) * slot_width))]
            counts = [(region == i).sum() for i in range(n_chars)]
            index = int(np.argmax(counts))
            name, area = CHARACTERS[index].name, int(counts[index])
            small, big = self._areas[name, "small"], self._areas[name, "big"]
            if area < self.min_area_share * small:
                continue
            size = "big" if area >= (small * big) ** 0.5 else "small"
            if name not in found or area > found[name][2]:
                found[name] = (position, size, area)
        return FrameFacts(scene, {n: p for n, (p, _, _) in found.items()}, {n: s for n, (_, s, _) in found.items()})

    def coherence(self, image: Image.Image, caption: str) -> float:
        """Text-image coherence: Jaccard overlap of the facts the caption states and the frame shows."""
        return coherence_of_facts(caption, self.read(image))

    def consistency(self, image: Image.Image, previous: Image.Image) -> float:
        """Character/style consistency with the previous frame: the world changes one thing per frame.

        Counts the things (the scene, each character seen in either frame) that differ; one
        change is the world's rule, each further one costs its share of the things compared.
        """
        return consistency_of_facts(self.read(image), self.read(previous))

    def score_story(self, images: list[Image.Image], captions: list[str]) -> StoryScore:
        if len(images) != len(captions) or not images:
            raise ValueError(f"need as many captions as images (got {len(captions)} and {len(images)}, at least one)")
        facts = [self.read(image) for image in images]
        coherence = [coherence_of_facts(c, f) for c, f in zip(captions, facts)]
        consistency = [consistency_of_facts(facts[i], facts[i - 1]) for i in range(1, len(facts))]
        return StoryScore(coherence, consistency)


@dataclass(frozen=True)
class StoryScore:
    coherence: list[float]
    consistency: list[float]

    @property
    def mean_coherence(self) -> float:
        return float(np.mean(self.coherence))

    @property
    def mean_consistency(self) -> float:
        return float(np.mean(self.consistency)) if self.consistency else 1.0


def coherence_of_facts(caption: str, shown: FrameFacts) -> float:
    return _jaccard(parse_caption(caption).as_set(), shown.as_set())


def fact_errors(stated: FrameFacts, shown: FrameFacts) -> dict[str, int]:
    """Why a frame falls short of its caption, by kind of fact: the scene, a stated character not
    found, one found out of its slot or at another size, a character shown that was not stated."""
    found = [name for name in stated.positions if name in shown.positions]
    return {"scene": int(shown.scene != stated.scene),
            "missing": len(stated.positions) - len(found),
            "position": sum(shown.positions[name] != stated.positions[name] for name in found),
            "size": sum(shown.sizes[name] != stated.sizes[name] for name in found),
            "extra": sum(name not in stated.positions for name in shown.positions)}


def consistency_of_facts(current: FrameFacts, previous: FrameFacts) -> float:
    """A frame without a recognisable scene has kept no style at all and scores 0."""
    if current.scene is None:
        return 0.0
    names = set(current.positions) | set(previous.positions)
    changed = int(current.scene != previous.scene)
    changed += sum(
        (current.positions.get(n), current.sizes.get(n)) != (previous.positions.get(n), previous.sizes.get(n))
        for n in names
    )
    return max(0.0, 1.0 - max(0, changed - 1) / (1 + len(names)))


def _jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
