"""A transformers ``Cache`` for LLaMA-style models that keeps a bounded, policy-chosen set of tokens.

transformers 5 LLaMA takes positions from ``get_seq_length()`` (here: every token ever seen) and the
mask geometry from ``get_mask_sizes()`` (here: ``held + q`` keys starting at ``seen - held``), and
calls ``update()`` layer by layer; ``update`` returns the held keys plus the new ones while storing
only what the policy keeps. One cache per request: all state lives here, never on the model.

The cache must know where images are for ``mm-sink``: the caller declares each image with
``add_image(boi, eoi)`` (absolute positions) before appending the tokens at those positions;
``image_spans`` finds them in a prompt of token ids. Inside ``with cache.preview():`` forwards attend
to the cache but leave it untouched (the story loop's image-query pass).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin

from seedstory.config.generation import AttentionSinkConfig
from seedstory.generation.retention import ImageSpan, RetentionPolicy
from seedstory.generation.rope import rerotate, static_inv_freq
from seedstory.generation.slots import SlotTable, StepPlan, rotation_for


def relayout(keys: torch.Tensor, values: torch.Tensor, pristine_keys: torch.Tensor | None, plan: StepPlan,
             inv_freq: torch.Tensor | None) -> None:
    """Apply a plan's moves, pristine copies and re-rotations to one story's buffers ``[1, heads, slots, dim]``."""
    device = keys.device
    if plan.move_src.numel():
        src, dst = plan.index("move_src", device), plan.index("move_dst", device)
        keys.index_copy_(2, dst, keys.index_select(2, src))
        values.index_copy_(2, dst, values.index_select(2, src))
    if plan.save_slots.numel():
        saved = keys.index_select(2, plan.index("save_slots", device))
        pristine_keys.index_copy_(2, plan.index("save_pristine", device), saved)
    if plan.rotate_slots.numel():
        cos, sin = rotation_for(plan, inv_freq, device)
        pristine = pristine_keys.index_select(2, plan.index("rotate_pristine", device))
        keys.index_copy_(2, plan.index("rotate_slots", device), rerotate(pristine, cos, sin))


class SinkCacheLayer(CacheLayerMixin):
    """One layer's key/value buffers; the shared ``SlotTable`` decides what goes where."""

    is_sliding = False

    def __init__(self, table: SlotTable, inv_freq: torch.Tensor | None) -> None:
        super().__init__()
        self.table = table
        self.inv_freq = inv_freq
        self.pristine_keys: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, _ = key_states.shape
        self.keys = key_states.new_zeros(batch, heads, self.table.capacity, key_states.shape[-1])
        self.values = value_states.new_zeros(batch, heads, self.table.capacity, value_states.shape[-1])
        if self.table.pristine_capacity:
            self.pristine_keys = key_states.new_zeros(batch, heads, self.table.pristine_capacity, key_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, plan: StepPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if plan is None:
            raise ValueError("SinkCacheLayer.update needs the step plan; call it through SinkCache.update")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if plan.capacity > self.keys.shape[2]:
            self._grow(plan.capacity)
        relayout(self.keys, self.values, self.pristine_keys, plan, self.inv_freq)
        held, after = plan.held, plan.stored_after
        if plan.decode_slot is not None:
            slot = plan.decode_slot
            self.keys[:, :, slot : slot + 1].copy_(key_states)
            self.values[:, :, slot : slot + 1].copy_(value_states)
            return self.keys[:, :, :after], self.values[:, :, :after]
        if plan.returns_view:
            self.keys[:, :, held:after].copy_(key_states)
            self.values[:, :, held:after].copy_(value_states)
            return self.keys[:, :, :after], self.values[:, :, :after]
        keys = torch.cat([self.keys[:, :, :held], key_states], dim=2)
        values = torch.cat([self.values[:, :, :held], value_states], dim=2)
        if after > held:
            keep = plan.index("chunk_keep", key_states.device)
            self.keys[:, :, held:after].copy_(key_states[:, :, keep])
            self.values[:, :, held:after].copy_(value_states[:, :, keep])
        return keys, values

    def _grow(self, capacity: int) -> None:
        """Dense mode only: double the buffers (amortised O(1) per token)."""
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            grown[:, :, : old.shape[2]] = old
            setattr(self, name, grown)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        plan = self.table.plan(query_length, commit=True)
        return plan.kv_length, plan.kv_offset

    def get_seq_length(self) -> int:
        return self.table.seen

    def get_max_length(self) -> int:
        return -1

    def tensor_bytes(self) -> int:
        tensors = [t for t in (self.keys, self.values, self.pristine_keys) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def held_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        per_token = (self.keys[:, :, :1].numel() * self.keys.element_size()
                     + self.values[:, :, :1].numel() * self.values.element_size())
        return per_token * self.table.stored


class SinkCache(Cache):
    """Dense / window / sink / mm-sink KV cache with absolute or re-rotated positions."""

    def __init__(self, config: AttentionSinkConfig, model_config: PreTrainedConfig) -> None:
        text_config = model_config.get_text_config(decoder=True)
        rerotate_keys = config.positions == "rerotate"
        self.config = config
        self.policy = RetentionPolicy(config)
        self.table = SlotTable(self.policy, rerotate=rerotate_keys)
        inv_freq = static_inv_freq(text_config) if rerotate_keys else None
        layers = [SinkCacheLayer(self.table, inv_freq) for _ in range(text_config.num_hidden_layers)]
        super().__init__(layers=layers)
        self._commit = True
        self._plan: StepPlan | None = None

    @property
    def seen_tokens(self) -> int:
        return self.table.seen

    def add_image(self, boi: int, eoi: int) -> None:
        """Declare an image at absolute positions ``boi`` .. ``eoi`` before its tokens are appended."""
        if boi < self.table.seen:
            raise ValueError(
                f"declare an image before appending it: BOI {boi} is already behind {self.table.seen} seen tokens"
            )
        self.policy.add_image(ImageSpan(boi, eoi))

    @contextmanager
    def preview(self) -> Iterator[None]:
        """Forwards in this block attend to the held tokens and the new ones, and store nothing."""
        self._commit = False
        try:
            yield
        finally:
            self._commit = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = key_states.shape[-2]
        if layer_idx == 0:
            self._plan = self.table.plan(q, commit=self._commit)
            self.table.apply(self._plan)
        elif self._plan is None or self._plan.q != q:
            raise RuntimeError("SinkCache expects layer 0 to be updated first in every forward")
        return self.layers[layer_idx].update(key_states, value_states, plan=self._plan)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.table.seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        plan = self.table.plan(query_length, commit=self._commit)
        return plan.kv_length, plan.kv_offset

    def kept_positions(self) -> np.ndarray:
        """Absolute positions currently held (ascending); identical in every layer."""
        return self.table.positions()

    def effective_positions(self) -> np.ndarray:
        """The RoPE position each held key is rotated at, aligned with ``kept_positions()``."""
        return self.table.effective_positions()

    def held_bytes(self) -> int:
        """Bytes of the keys and values attention reads (held tokens, all layers)."""
        return sum(layer.held_bytes() for layer in self.layers)

    def tensor_bytes(self) -> int:
        """Bytes of every tensor the cache allocated (buffers at capacity, pristine keys)."""
        return sum(layer.tensor_bytes() for layer in self.layers if layer.is_initialized)


def image_spans(input_ids: torch.Tensor | list[int], boi_id: int, eoi_id: int,
                offset: int = 0) -> list[tuple[int, int]]:
    """``(boi, eoi)`` absolute positions of every complete image in a 1-D id sequence starting at ``offset``."""
    ids = torch.as_tensor(input_ids).reshape(-1).tolist()
    spans: list[tuple[int, int]] = []
    open_boi: int | None = None
    for index, token in enumerate(ids):
        if token == boi_id:
            if open_boi is not None:
                raise ValueError(f"BOI at {offset + index} inside the image opened at {offset + open_boi}")
            open_boi = index
        elif token == eoi_id:
            if open_boi is None:
                raise ValueError(f"EOI at {offset + index} without a BOI")
            spans.append((offset + open_boi, offset + index))
            open_boi = None
    if open_boi is not None:
        raise ValueError(f"image opened at {offset + open_boi} is not closed")
    return spans
