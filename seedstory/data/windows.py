"""Random story windows (paper appendix C.2): a random number of context frames before each target.

Every pass over the stories draws new windows: a random length (``min_context + 1`` ..
``window_frames``) at a random start frame, ``ceil(frames / window_frames)`` of them per story so
that a pass covers each story about once. The draw is a function of (seed, pass, story key) only,
so the same pass gives the same windows on any machine and in any actor.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int
    length: int

    @property
    def frames(self) -> range:
        return range(self.start, self.start + self.length)

    @property
    def target(self) -> int:
        return self.start + self.length - 1


def window_count(frames: int, window_frames: int, min_context: int) -> int:
    """Windows a story yields per pass: none when it cannot hold a target after ``min_context`` frames."""
    return math.ceil(frames / window_frames) if frames > min_context else 0


def story_windows(key: str, frames: int, window_frames: int, min_context: int, seed: int,
                  pass_index: int = 0) -> list[Window]:
    """The windows of one story in pass ``pass_index``: random lengths at random start frames."""
    rng = np.random.default_rng([seed, pass_index, zlib.crc32(key.encode())])
    longest = min(window_frames, frames)
    windows = []
    for _ in range(window_count(frames, window_frames, min_context)):
        length = int(rng.integers(min_context + 1, longest + 1))
        windows.append(Window(int(rng.integers(0, frames - length + 1)), length))
    return windows
