"""Whether generated text tells a legal story: each caption a complete world state one event away from the last.

A caption is valid when ``parse_caption`` reads a whole frame from it (a scene, and for each
character named a position and a size, no two on one spot, at most three on stage) and that
frame is one the world's rules allow after the previous one. The previous frame is the last
valid caption's (the opening's for the first segment), so one bad caption costs one point, not
every point after it.
"""

from __future__ import annotations

from seedstory.data.toyworld.captions import FrameFacts, parse_caption
from seedstory.data.toyworld.world import MAX_ON_STAGE, FrameState, Placement, possible_events


def state_of(facts: FrameFacts) -> FrameState | None:
    """The frame the facts describe, or None when they leave something out or cannot be drawn."""
    if facts.scene is None or set(facts.positions) != set(facts.sizes) or not facts.positions:
        return None
    if len(facts.positions) > MAX_ON_STAGE or len(set(facts.positions.values())) != len(facts.positions):
        return None
    return FrameState(facts.scene, {name: Placement(facts.positions[name], facts.sizes[name])
                                    for name in sorted(facts.positions)})


def follows(previous: FrameState, state: FrameState) -> bool:
    return any(after == state for _, after in possible_events(previous))


def caption_validity(opening: str, captions: list[str]) -> list[bool]:
    """One verdict per caption; raises if the opening itself is not a complete frame."""
    previous = state_of(parse_caption(opening))
    if previous is None:
        raise ValueError(f"the opening caption does not state a whole frame: {opening!r}")
    verdicts = []
    for caption in captions:
        state = state_of(parse_caption(caption))
        valid = state is not None and follows(previous, state)
        verdicts.append(valid)
        if valid:
            previous = state
    return verdicts
