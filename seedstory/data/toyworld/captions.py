"""Narrative captions that state everything a frame shows, and the parser that reads them back.

Every caption names the current scene and, for each character on stage, its position and
size; a character's facts always come right after its name and before the next name or the
end of the sentence, which is what lets :func:`parse_caption` read generated text by clause
instead of by template. Words the parser keys on are never used in another sense (no
"left" as a verb).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from seedstory.data.toyworld.world import CHARACTER_BY_NAME, CHARACTERS, SCENE_BY_NAME, SCENES, Event, FrameState

POSITION_WORDS = {"left": "left", "middle": "middle", "centre": "middle", "center": "middle", "right": "right"}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "big": "big", "large": "big", "huge": "big"}
LEAVE_WORDS = ("walks away", "heads home", "disappears", "goes away")
POSITION_PHRASES = {
    "left": ("on the left", "at the left side", "over on the left"),
    "middle": ("in the middle", "at the centre", "in the very middle"),
    "right": ("on the right", "at the right side", "over on the right"),
}
SIZE_PHRASES = {"small": ("small", "little", "tiny"), "big": ("big", "large", "huge")}

OPENINGS = ("Our story begins in {scene}.", "One day in {scene}, a new adventure starts.",
            "It is a quiet moment in {scene}.")
SCENE_REMINDERS = ("In {scene}, ", "Meanwhile in {scene}, ", "Back in {scene}, ")
STATE_PHRASES = ("{name} {desc}, {size}, stands {pos}.", "{name} is {pos}, looking {size}.",
                 "{name} waits {pos} and looks {size}.", "{name}, still {size}, rests {pos}.")
EVENT_PHRASES = {
    "enter": ("{name} {desc} hops in {pos}, {size} and cheerful.",
              "A new friend arrives: {name} {desc}, {size}, appears {pos}.",
              "{name} {desc} comes along and stands {pos}, {size}."),
    "leave": ("{name} waves goodbye and walks away.", "{name} heads home.", "{name} quietly disappears."),
    "move": ("{name} walks over {pos}, still {size}.", "{name}, {size} as before, runs {pos}.",
             "{name} skips {pos}, {size} as ever."),
    "meet": ("{name}, {size}, hurries {pos} to meet {partner}.", "{name} {desc} goes {pos}, {size}, to greet {partner}."),
    "grow": ("{name}, standing {pos}, grows {size}!", "Suddenly {name} {pos} becomes {size}.",
             "{name} {pos} stretches and turns {size}."),
    "shrink": ("{name}, standing {pos}, shrinks and becomes {size}.", "Suddenly {name} {pos} turns {size}.",
               "{name} {pos} curls up, now {size}."),
    "travel": ("Everyone travels to {scene}.", "The friends find themselves in {scene}.",
               "Together they go to {scene}."),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _character_text(template: str, rng: np.random.Generator, state: FrameState, name: str, **extra: str) -> str:
    placement = state.cast.get(name)
    return template.format(
        name=name, desc=CHARACTER_BY_NAME[name].description,
        pos=_pick(rng, POSITION_PHRASES[placement.position]) if placement else "",
        size=_pick(rng, SIZE_PHRASES[placement.size]) if placement else "",
        scene=SCENE_BY_NAME[state.scene].phrase, **extra,
    )


def write_caption(event: Event, state: FrameState, rng: np.random.Generator) -> str:
    """The caption of the frame ``state`` that ``event`` led to."""
    scene = SCENE_BY_NAME[state.scene].phrase
    if event.kind == "open":
        lead = _pick(rng, OPENINGS).format(scene=scene)
    elif event.kind == "travel":
        lead = _pick(rng, EVENT_PHRASES["travel"]).format(scene=scene)
    else:
        lead = _character_text(_pick(rng, EVENT_PHRASES[event.kind]), rng, state, event.actor,
                               partner=event.partner or "")
    others = [n for n in state.cast if n != event.actor]
    parts = [lead]
    reminder = event.kind not in ("open", "travel")
    for i, name in enumerate(others):
        text = _character_text(_pick(rng, STATE_PHRASES), rng, state, name)
        if i == 0 and reminder:
            text = _pick(rng, SCENE_REMINDERS).format(scene=scene) + text
            reminder = False
        parts.append(text)
    if reminder:
        parts.append(f"All this happens in {scene}.")
    return " ".join(parts)


@dataclass(frozen=True)
class FrameFacts:
    """What a caption states or an image shows: the scene and each character's position and size."""

    scene: str | None
    positions: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, str] = field(default_factory=dict)

    def as_set(self) -> set[tuple[str, ...]]:
        facts: set[tuple[str, ...]] = {("scene", self.scene)} if self.scene else set()
        facts |= {(name, "position", p) for name, p in self.positions.items()}
        facts |= {(name, "size", s) for name, s in self.sizes.items()}
        return facts

    @classmethod
    def of_state(cls, state: FrameState) -> FrameFacts:
        return cls(state.scene, {n: p.position for n, p in state.cast.items()},
                   {n: p.size for n, p in state.cast.items()})


_NAMES = "|".join(c.name for c in CHARACTERS)
_SCENE_PATTERN = re.compile(r"\b(" + "|".join(s.name for s in SCENES) + r")\b", re.IGNORECASE)
_CLAUSE_END = re.compile(r"[.!?;:]")
_NAME_PATTERN = re.compile(rf"\b({_NAMES})\b")


def parse_caption(text: str) -> FrameFacts:
    """The facts a caption states; the first position/size found in a name's clauses wins."""
    scenes = _SCENE_PATTERN.findall(text)
    positions: dict[str, str] = {}
    sizes: dict[str, str] = {}
    for sentence in _CLAUSE_END.split(text):
        mentions = list(_NAME_PATTERN.finditer(sentence))
        for i, mention in enumerate(mentions):
            end = mentions[i + 1].start() if i + 1 < len(mentions) else len(sentence)
            clause = sentence[mention.end():end].lower()
            name = mention.group(1)
            if any(word in clause for word in LEAVE_WORDS):
                continue
            words = re.findall(r"[a-z]+", clause)
            position = next((POSITION_WORDS[w] for w in words if w in POSITION_WORDS), None)
            size = next((SIZE_WORDS[w] for w in words if w in SIZE_WORDS), None)
            if position and name not in positions:
                positions[name] = position
            if size and name not in sizes:
                sizes[name] = size
    return FrameFacts(scenes[-1].lower() if scenes else None, positions, sizes)
