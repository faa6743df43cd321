"""The toy world's cast, scenes and rules: what a frame can show and how one frame follows another.

Everything is discrete so a program can judge it exactly: a frame is a scene (one flat
background colour) and at most three characters, each in one of three slots (left, middle,
right) at one of two sizes. Colours are at least 100 apart in RGB, so identity survives JPEG
and blurry generations. Exactly one thing changes from one frame to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

POSITIONS = ("left", "middle", "right")
SIZES = ("small", "big")


@dataclass(frozen=True)
class Character:
    name: str
    shape: str
    colour_name: str
    rgb: tuple[int, int, int]

    @property
    def description(self) -> str:
        return f"the {self.colour_name} {self.shape}"


@dataclass(frozen=True)
class Scene:
    name: str
    phrase: str
    rgb: tuple[int, int, int]


CHARACTERS = (
    Character("Tom", "circle", "red", (220, 40, 40)),
    Character("Mia", "square", "blue", (40, 90, 230)),
    Character("Ben", "triangle", "yellow", (245, 205, 20)),
    Character("Zoe", "diamond", "purple", (150, 50, 190)),
    Character("Kit", "circle", "pink", (250, 130, 200)),
)
SCENES = (
    Scene("meadow", "the meadow", (120, 200, 110)),
    Scene("beach", "the beach", (245, 235, 190)),
    Scene("night", "the night sky", (20, 25, 60)),
    Scene("cave", "the cave", (110, 95, 80)),
)
CHARACTER_BY_NAME = {c.name: c for c in CHARACTERS}
SCENE_BY_NAME = {s.name: s for s in SCENES}
MAX_ON_STAGE = len(POSITIONS)


@dataclass(frozen=True)
class Placement:
    position: str
    size: str


@dataclass(frozen=True)
class FrameState:
    """What one frame shows; ``cast`` maps a character's name to where and how big it is."""

    scene: str
    cast: dict[str, Placement] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.scene, tuple(sorted(self.cast.items()))))

    def free_positions(self) -> list[str]:
        taken = {p.position for p in self.cast.values()}
        return [p for p in POSITIONS if p not in taken]

    def who_is_at(self, position: str) -> str | None:
        return next((name for name, p in self.cast.items() if p.position == position), None)


@dataclass(frozen=True)
class Event:
    """The one change that leads into a frame; ``kind`` is the action, ``actor`` who did it."""

    kind: str
    actor: str | None = None
    partner: str | None = None


def _neighbours(position: str) -> list[str]:
    i = POSITIONS.index(position)
    return [POSITIONS[j] for j in (i - 1, i + 1) if 0 <= j < len(POSITIONS)]


def opening(rng: np.random.Generator) -> FrameState:
    scene = SCENES[rng.integers(len(SCENES))].name
    count = int(rng.integers(1, 3))
    names = rng.choice([c.name for c in CHARACTERS], size=count, replace=False)
    positions = rng.choice(POSITIONS, size=count, replace=False)
    cast = {str(n): Placement(str(p), SIZES[rng.integers(2)]) for n, p in zip(names, positions)}
    return FrameState(scene, cast)


def possible_events(state: FrameState) -> list[tuple[Event, FrameState]]:
    """Every event the rules allow from ``state`` and the frame each one leads to."""
    out: list[tuple[Event, FrameState]] = []
    free = state.free_positions()
    offstage = [c.name for c in CHARACTERS if c.name not in state.cast]
    for name in offstage:
        for position in free:
            for size in SIZES:
                out.append((Event("enter", name), replace(state, cast={**state.cast, name: Placement(position, size)})))
    for name, placement in state.cast.items():
        if len(state.cast) > 1:
            rest = {n: p for n, p in state.cast.items() if n != name}
            out.append((Event("leave", name), replace(state, cast=rest)))
        for position in free:
            moved = {**state.cast, name: Placement(position, placement.size)}
            partner = next((state.who_is_at(n) for n in _neighbours(position)
                            if state.who_is_at(n) not in (None, name)), None)
            out.append((Event("meet" if partner else "move", name, partner), replace(state, cast=moved)))
        other = "big" if placement.size == "small" else "small"
        resized = {**state.cast, name: Placement(placement.position, other)}
        out.append((Event("grow" if other == "big" else "shrink", name), replace(state, cast=resized)))
    for scene in SCENES:
        if scene.name != state.scene:
            out.append((Event("travel"), replace(state, scene=scene.name)))
    return out


def story_states(rng: np.random.Generator, frames: int) -> list[tuple[Event, FrameState]]:
    """A story of ``frames`` frames: the opening, then one allowed event per frame.

    Events are drawn by kind first (uniformly) so that rare-but-legal kinds such as travel
    are as common as moves.
    """
    state = opening(rng)
    story = [(Event("open"), state)]
    for _ in range(frames - 1):
        choices = possible_events(state)
        kinds = sorted({e.kind for e, _ in choices})
        kind = kinds[rng.integers(len(kinds))]
        of_kind = [c for c in choices if c[0].kind == kind]
        event, state = of_kind[rng.integers(len(of_kind))]
        story.append((event, state))
    return story
