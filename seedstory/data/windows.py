"""Random-length story windows (paper appendix C.2): chunks of ``window_frames`` frames, each cut
to a random length so the target is preceded by a random number of context frames."""

from __future__ import annotations

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


def story_windows(key: str, frames: int, window_frames: int, min_context: int, seed: int, epoch: int = 0) -> list[Window]:
    """One window per chunk, the same for the same (seed, epoch, story key) on any machine."""
    rng = np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])
    windows = []
    for start in range(0, frames, window_frames):
        chunk = min(window_frames, frames - start)
        if chunk < min_context + 1:
            continue
        windows.append(Window(start, int(rng.integers(min_context + 1, chunk + 1))))
    return windows
