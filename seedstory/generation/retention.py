"""Which absolute positions a KV cache keeps after ``seen`` tokens: the eviction policy, nothing else.

Kept set for ``mm-sink`` (the multimodal attention sink): positions ``[0, S)``; for each *anchored* image, and
only the ``max_anchored_images`` most recent of those, the inclusive ranges
``[boi - boi_before, boi + boi_after]`` and ``[eoi - eoi_before, eoi + eoi_after]``; and the last ``W``
positions. An image is anchored once its earliest anchor position has left the window. With the
paper's anchors (``boi_before = 0`` and the EOI range starting after BOI) that is exactly "its BOI has
left the window" (``boi < seen - W``). The general form keeps the set causal: an anchor position
that lies before BOI (``boi_before > 0``, or an image shorter than ``eoi_before``) would otherwise
be evicted while BOI is still in the window and be wanted back later, which no cache can do.
``dense`` keeps everything, ``window`` only the last ``W``, ``sink`` the first ``S`` and the last
``W``. Every set is clipped to ``[0, seen)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seedstory.config.generation import AttentionSinkConfig


@dataclass(frozen=True, order=True)
class ImageSpan:
    """An image's BOI and EOI absolute positions (inclusive), as the caller declared them."""

    boi: int
    eoi: int

    def __post_init__(self) -> None:
        if self.boi < 0 or self.eoi <= self.boi:
            raise ValueError(f"an image span needs 0 <= boi < eoi, got boi={self.boi} eoi={self.eoi}")


class RetentionPolicy:
    """The kept set as a vectorised membership test over absolute positions."""

    def __init__(self, config: AttentionSinkConfig) -> None:
        self.config = config
        self._boi = np.empty(0, dtype=np.int64)
        self._eoi = np.empty(0, dtype=np.int64)
        self._first_anchor = np.empty(0, dtype=np.int64)
        self._ranges: tuple[tuple[int, int], np.ndarray] = ((0, 0), np.empty((0, 2), dtype=np.int64))

    @property
    def bounded(self) -> bool:
        return self.config.mode != "dense"

    def capacity(self) -> int:
        """The most positions the kept set can ever hold (only for bounded modes)."""
        c = self.config
        if c.mode == "dense":
            raise ValueError("dense attention keeps every position: it has no capacity bound")
        if c.mode == "window":
            return c.window
        if c.mode == "sink":
            return c.sink_tokens + c.window
        per_image = (c.boi_before + c.boi_after + 1) + (c.eoi_before + c.eoi_after + 1)
        return c.sink_tokens + c.window + c.max_anchored_images * per_image

    def out_of_window_capacity(self) -> int:
        """The most kept positions that can lie outside the window (sinks and anchors)."""
        return self.capacity() - self.config.window if self.bounded else 0

    @property
    def image_count(self) -> int:
        return int(self._boi.size)

    def add_image(self, span: ImageSpan) -> None:
        if self._boi.size and span.boi <= self._eoi[-1]:
            raise ValueError(
                f"images must be declared in order without overlap: BOI {span.boi} is not after "
                f"the previous EOI {int(self._eoi[-1])}"
            )
        self._boi = np.append(self._boi, span.boi)
        self._eoi = np.append(self._eoi, span.eoi)
        c = self.config
        self._first_anchor = np.append(self._first_anchor, min(span.boi - c.boi_before, span.eoi - c.eoi_before))

    def anchored(self, seen: int) -> tuple[int, int]:
        """``[first, last)`` indices of the images whose anchors are kept after ``seen`` tokens (mm-sink only)."""
        c = self.config
        if c.mode != "mm-sink" or c.max_anchored_images == 0:
            return 0, 0
        left = int(np.searchsorted(self._first_anchor, seen - c.window, side="left"))
        return max(0, left - c.max_anchored_images), left

    def anchor_ranges(self, seen: int) -> np.ndarray:
        """Inclusive ``[lo, hi]`` rows of the anchors live after ``seen`` tokens (mm-sink only)."""
        c = self.config
        first, last = self.anchored(seen)
        if self._ranges[0] != (first, last):  # changes once per image: decoding reuses the rows
            boi, eoi = self._boi[first:last], self._eoi[first:last]
            self._ranges = ((first, last), np.concatenate([
                np.stack([boi - c.boi_before, boi + c.boi_after], axis=1),
                np.stack([eoi - c.eoi_before, eoi + c.eoi_after], axis=1),
            ]))
        return self._ranges[1]

    def keep(self, positions: np.ndarray, seen: int) -> np.ndarray:
        """Boolean mask: which of ``positions`` are in the kept set after ``seen`` tokens."""
        c = self.config
        seen_mask = (positions >= 0) & (positions < seen)
        if c.mode == "dense":
            return seen_mask
        kept = positions >= seen - c.window
        if c.mode in ("sink", "mm-sink"):
            kept |= positions < c.sink_tokens
        ranges = self.anchor_ranges(seen)
        if ranges.size:
            p = positions[:, None]
            kept |= ((p >= ranges[None, :, 0]) & (p <= ranges[None, :, 1])).any(axis=1)
        return kept & seen_mask

    def kept_positions(self, seen: int) -> np.ndarray:
        """Every kept position after ``seen`` tokens, ascending (O(seen): for tests and inspection)."""
        positions = np.arange(seen, dtype=np.int64)
        return positions[self.keep(positions, seen)]
