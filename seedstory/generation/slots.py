"""Bookkeeping shared by every layer of one sink cache: which absolute position each buffer slot holds.

All layers see the same token history, so one slot table plans each step (evict, compact, write,
re-rotate) once; each layer then applies the same plan to its own key/value buffers.

Layout: held tokens occupy the contiguous slot prefix ``[0, stored)`` of a preallocated buffer,
in no particular order. A decoded token is written into the slot its eviction freed (steady state:
one write, no move, planned in O(1) while the anchored images stay the same); other holes are
filled by moving a tail slot into them (swap-remove). A chunk of several tokens is laid out after
the compacted held tokens so that the causal mask over ``[held | chunk]`` is right. Attention never
depends on the order of the held tokens, only on their rotations: every held token is visible to
every query of the step.

Positions. ``absolute``: keys keep the rotation of their absolute position. ``rerotate``: the
relative distance between a query and a key is their distance *within the cache* (StreamingLLM):
the ``m`` held keys get effective positions ``seen - m + rank``, which is the in-cache layout
shifted by a constant (RoPE is shift-invariant). Window keys already sit there; only keys outside
the window (sinks, anchors) move. Each of those is re-rotated from a pristine copy taken when it
first moved, so rounding never accumulates over a long story.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from seedstory.generation.retention import RetentionPolicy
from seedstory.generation.rope import rotation


@dataclass
class StepPlan:
    """What every layer does to its buffers for one forward of ``q`` tokens."""

    seen: int
    q: int
    commit: bool
    held: int
    capacity: int
    move_src: torch.Tensor
    move_dst: torch.Tensor
    save_slots: torch.Tensor
    save_pristine: torch.Tensor
    rotate_slots: torch.Tensor
    rotate_pristine: torch.Tensor
    rotate_delta: torch.Tensor
    decode_slot: int | None
    chunk_keep: torch.Tensor | None
    stored_after: int
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def kv_length(self) -> int:
        return self.held + self.q

    @property
    def kv_offset(self) -> int:
        return self.seen - self.held

    @property
    def returns_view(self) -> bool:
        """The buffer prefix holds exactly ``[held | chunk]``: attention reads it in place."""
        return self.decode_slot is not None or (self.commit and self.chunk_keep is None)

    def index(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device)
        return self._on_device[key]


def _long(values: np.ndarray | list[int]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


_NO_SLOTS = torch.empty(0, dtype=torch.int64)  # shared by plans that move, save and rotate nothing


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.full(capacity, -1, dtype=np.int64)
    grown[: array.size] = array
    return grown


class SlotTable:
    """Slot -> absolute position (and, when re-rotating, effective position and pristine copy)."""

    def __init__(self, policy: RetentionPolicy, rerotate: bool, initial_capacity: int = 256) -> None:
        self.policy = policy
        self.rerotate = rerotate
        self.capacity = policy.capacity() if policy.bounded else initial_capacity
        self.pristine_capacity = policy.out_of_window_capacity() if rerotate else 0
        self.pos = np.full(self.capacity, -1, dtype=np.int64)
        self.eff = np.full(self.capacity, -1, dtype=np.int64)
        self.pristine = np.full(self.capacity, -1, dtype=np.int64)
        self.free_pristine = list(range(self.pristine_capacity - 1, -1, -1))
        self.stored = 0
        self.seen = 0
        self._anchored = (0, 0)  # images whose anchors the held set keeps (``RetentionPolicy.anchored``)
        self._pending: tuple[tuple[int, int, bool, int], StepPlan, dict] | None = None

    def positions(self) -> np.ndarray:
        return np.sort(self.pos[: self.stored])

    def effective_positions(self) -> np.ndarray:
        """Effective RoPE position of each held key, in the order of ``positions()``."""
        order = np.argsort(self.pos[: self.stored])
        return self.eff[: self.stored][order] if self.rerotate else self.pos[: self.stored][order]

    def plan(self, q: int, commit: bool) -> StepPlan:
        """The plan for the next forward of ``q`` tokens (pure: the table changes only in ``commit``)."""
        if q < 1:
            raise ValueError(f"a forward appends at least one token, got {q}")
        key = (self.seen, q, commit, self.policy.image_count)
        if self._pending is not None and self._pending[0] == key:
            return self._pending[1]
        fast = commit and q == 1 and not self.rerotate
        plan, state = (fast and self._decode_plan()) or self._make_plan(q, commit)
        self._pending = (key, plan, state)
        return plan

    def apply(self, plan: StepPlan) -> None:
        """Adopt the bookkeeping of ``plan`` (called once per forward, by the first layer)."""
        if self._pending is None or self._pending[1] is not plan:
            raise RuntimeError("apply() got a plan that is not the table's pending plan")
        _, _, state = self._pending
        self.capacity = state["capacity"]
        self.pos, self.eff, self.pristine = state["pos"], state["eff"], state["pristine"]
        self.free_pristine = state["free_pristine"]
        self.stored = plan.stored_after
        if plan.commit:
            self.seen += plan.q
            self._anchored = state["anchored"]
        self._pending = None

    def _decode_plan(self) -> tuple[StepPlan, dict] | None:
        """One committed token at absolute positions, the steady state of decoding, in O(1) bookkeeping.

        While the anchored images stay the same, the only position that can leave the kept set is the
        one leaving the window, ``seen - W``; its slot takes the new token. ``None`` (use the full plan)
        when the anchored images change at this step or a dense buffer must grow.
        """
        n, stored = self.seen, self.stored
        anchored = self.policy.anchored(n + 1)
        if anchored != self._anchored:
            return None
        slot = held = stored
        leaving = n - self.policy.config.window
        if self.policy.bounded and leaving >= 0 and not self.policy.keep(np.array([leaving]), n + 1)[0]:
            (slots,) = np.nonzero(self.pos[:stored] == leaving)
            if slots.size != 1:
                raise AssertionError(f"position {leaving} is in the window but held in {slots.size} slots")
            slot, held = int(slots[0]), stored - 1
        if slot >= self.capacity:
            return None
        pos, eff, pristine = self.pos.copy(), self.eff.copy(), self.pristine.copy()
        pos[slot], eff[slot], pristine[slot] = n, n, -1
        plan = StepPlan(
            seen=n, q=1, commit=True, held=held, capacity=self.capacity,
            move_src=_NO_SLOTS, move_dst=_NO_SLOTS, save_slots=_NO_SLOTS, save_pristine=_NO_SLOTS,
            rotate_slots=_NO_SLOTS, rotate_pristine=_NO_SLOTS, rotate_delta=_NO_SLOTS,
            decode_slot=slot, chunk_keep=None, stored_after=held + 1,
        )
        state = {"capacity": self.capacity, "pos": pos, "eff": eff, "pristine": pristine,
                 "free_pristine": self.free_pristine, "anchored": anchored}
        return plan, state

    def _make_plan(self, q: int, commit: bool) -> tuple[StepPlan, dict]:
        n, stored = self.seen, self.stored
        capacity = self.capacity
        pos, eff, pristine = self.pos.copy(), self.eff.copy(), self.pristine.copy()
        free_pristine = list(self.free_pristine)
        held_pos = pos[:stored]
        keep = self.policy.keep(held_pos, n + q) if commit else np.ones(stored, dtype=bool)
        holes = np.flatnonzero(~keep)
        m = stored - holes.size
        for p in pristine[holes]:
            if p >= 0:
                free_pristine.append(int(p))
        pristine[holes] = -1

        chunk_pos = np.arange(n, n + q, dtype=np.int64)
        chunk_keep = self.policy.keep(chunk_pos, n + q) if commit else np.zeros(q, dtype=bool)
        k = int(chunk_keep.sum())
        decode_slot: int | None = None
        if commit and q == 1 and k == 1:
            region = m + 1
            free = np.concatenate([holes[holes < region], np.arange(stored, max(stored, region))])
            sources = np.flatnonzero(keep)
            sources = sources[sources >= region]
            move_dst, decode_slot = free[: sources.size], int(free[sources.size])
            old_slots = np.setdiff1d(np.arange(region), [decode_slot], assume_unique=True)
        else:
            region = m
            move_dst = holes[holes < region]
            sources = np.flatnonzero(keep)
            sources = sources[sources >= region]
            old_slots = np.arange(region)
        for array in (pos, eff, pristine):
            array[move_dst] = array[sources]
        if m + k > capacity:
            if self.policy.bounded:
                raise AssertionError(f"kept set {m + k} exceeds the bounded capacity {capacity}")
            capacity = max(2 * capacity, m + k)
            pos, eff, pristine = (_grown(array, capacity) for array in (pos, eff, pristine))

        save_slots: list[int] = []
        save_pristine: list[int] = []
        rotate_slots = rotate_pristine = rotate_delta = np.empty(0, dtype=np.int64)
        if self.rerotate and old_slots.size:
            old_pos = pos[old_slots]
            rank = np.empty(old_slots.size, dtype=np.int64)
            rank[np.argsort(old_pos)] = np.arange(old_slots.size)
            target = n - m + rank
            changed = target != eff[old_slots]
            rotate_slots = old_slots[changed]
            for slot in rotate_slots:
                if pristine[slot] < 0:
                    if not free_pristine:
                        raise AssertionError("more keys outside the window than the policy allows")
                    pristine[slot] = free_pristine.pop()
                    save_slots.append(int(slot))
                    save_pristine.append(int(pristine[slot]))
            rotate_pristine = pristine[rotate_slots]
            rotate_delta = target[changed] - pos[rotate_slots]
            eff[rotate_slots] = target[changed]

        chunk_keep_tensor: torch.Tensor | None = None
        if decode_slot is not None:
            new_slots = np.array([decode_slot])
        else:
            new_slots = np.arange(m, m + k)
            if not (commit and k == q):
                chunk_keep_tensor = torch.as_tensor(chunk_keep)
        kept_chunk = chunk_pos[chunk_keep]
        pos[new_slots], eff[new_slots], pristine[new_slots] = kept_chunk, kept_chunk, -1

        plan = StepPlan(
            seen=n, q=q, commit=commit, held=m, capacity=capacity,
            move_src=_long(sources), move_dst=_long(move_dst),
            save_slots=_long(save_slots), save_pristine=_long(save_pristine),
            rotate_slots=_long(rotate_slots), rotate_pristine=_long(rotate_pristine),
            rotate_delta=_long(rotate_delta),
            decode_slot=decode_slot, chunk_keep=chunk_keep_tensor, stored_after=m + k,
        )
        anchored = self.policy.anchored(n + q) if commit else self._anchored
        state = {"capacity": capacity, "pos": pos, "eff": eff, "pristine": pristine,
                 "free_pristine": free_pristine, "anchored": anchored}
        return plan, state


def rotation_for(plan: StepPlan, inv_freq: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for the plan's re-rotations, computed once per step and device, shared by all layers."""
    key = ("rotation", device)
    if key not in plan._on_device:
        plan._on_device[key] = tuple(t.to(device) for t in rotation(plan.rotate_delta, inv_freq))
    return plan._on_device[key]
