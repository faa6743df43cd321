"""The KV cache of many stories sharing one forward: a fixed block of rows, one story's sink cache per row.

Each row has its own ``SlotTable`` (kept set, slot layout, positions, anchors), so a story in a batch
keeps exactly what it would keep alone. The buffers are ``[rows, kv_heads, capacity + 1, head_dim]`` per
layer, allocated once: a bounded mode's capacity is its kept set's bound, dense mode's is
``dense_capacity`` tokens. Memory is therefore fixed by ``rows x capacity`` and a story either has a
row or waits.

A forward covers some rows, all with the same number ``q`` of new tokens (``begin`` plans it):

- decoding (``q = 1``, committed): the forward covers the whole row range from the first decoding
  row to the last, so attention reads the buffers in place (a view, never a gathered copy of every
  row's cache). Each decoding row's plan names the slot its token goes to; a row in the range that
  is not decoding this step (a story between chunks, or no story) is carried as a masked dummy whose
  token goes to the row's scratch slot, one slot past the capacity, which no mask ever exposes;
- chunks (prompt pieces, image blocks, the image-query preview): each row's held keys are gathered
  and the chunk appended, causal within the chunk; what the row's policy keeps is then stored.

Each row's queries take that row's own absolute positions (``position_ids``); the mask is additive
(0 or the dtype's minimum), which eager and SDPA attention both read.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin

from seedstory.config.generation import AttentionSinkConfig
from seedstory.generation.retention import ImageSpan, RetentionPolicy
from seedstory.generation.rope import static_inv_freq
from seedstory.generation.sink_cache import relayout
from seedstory.generation.slots import SlotTable, StepPlan


class _BatchStep:
    """One forward: the rows it advances and their plans, the rows it covers, how the layers read the buffers."""

    def __init__(self, rows: list[int], plans: list[StepPlan], scratch: int, device: torch.device) -> None:
        self.rows = rows
        self.plans = plans
        self.q = plans[0].q
        self.decode = self.q == 1 and all(p.decode_slot is not None for p in plans)
        if not self.decode and any(p.decode_slot is not None for p in plans):
            raise RuntimeError("a forward mixes decode plans with chunk plans: they read different slots")
        if self.decode:
            self.covered = list(range(rows[0], rows[-1] + 1))
            self.row_slice = slice(rows[0], rows[-1] + 1)
            slots = dict.fromkeys(self.covered, scratch) | {row: p.decode_slot for row, p in zip(rows, plans)}
            self.decode_slots = torch.tensor([slots[row] for row in self.covered], device=device)
            self.kv_length = max(p.stored_after for p in plans)
        else:
            self.covered = rows
            self.kv_length = max(p.held for p in plans) + self.q
        self.row_index = torch.tensor(self.covered, device=device)


class BatchSinkLayer(CacheLayerMixin):
    """One layer's buffers for every row; the cache's current step says what to read and write."""

    is_sliding = False

    def __init__(self, owner: BatchSinkCache, keys: torch.Tensor, values: torch.Tensor,
                 pristine_keys: torch.Tensor | None) -> None:
        super().__init__()
        self.owner = owner
        self.keys, self.values, self.pristine_keys = keys, values, pristine_keys
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a batch cache allocates its buffers up front")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.owner.current
        for row, plan in zip(step.rows, step.plans):
            pristine = self.pristine_keys[row : row + 1] if self.pristine_keys is not None else None
            relayout(self.keys[row : row + 1], self.values[row : row + 1], pristine, plan, self.owner.inv_freq)
        if step.decode:
            self.keys[step.row_index, :, step.decode_slots] = key_states[:, :, 0]
            self.values[step.row_index, :, step.decode_slots] = value_states[:, :, 0]
            return self.keys[step.row_slice, :, : step.kv_length], self.values[step.row_slice, :, : step.kv_length]
        held = step.kv_length - step.q
        keys = torch.cat([self.keys[step.row_index, :, :held], key_states], dim=2)
        values = torch.cat([self.values[step.row_index, :, :held], value_states], dim=2)
        for i, (row, plan) in enumerate(zip(step.rows, step.plans)):
            if plan.stored_after > plan.held:
                keep = plan.index("chunk_keep", key_states.device) if plan.chunk_keep is not None else slice(None)
                self.keys[row, :, plan.held : plan.stored_after] = key_states[i][:, keep]
                self.values[row, :, plan.held : plan.stored_after] = value_states[i][:, keep]
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.current.kv_length, 0

    def get_seq_length(self) -> int:
        raise RuntimeError("rows of a batch cache have different lengths: pass position_ids")

    def get_max_length(self) -> int:
        return self.owner.capacity


class BatchSinkCache(Cache):
    """Dense / window / sink / mm-sink KV cache of ``rows`` stories, absolute or re-rotated positions."""

    def __init__(self, config: AttentionSinkConfig, model_config: PreTrainedConfig, rows: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        text = model_config.get_text_config(decoder=True)
        self.config = config
        self.rerotate = config.positions == "rerotate"
        probe = RetentionPolicy(config)
        self.capacity = probe.capacity() if probe.bounded else config.dense_capacity
        pristine = probe.out_of_window_capacity() if self.rerotate else 0
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (rows, text.num_key_value_heads, self.capacity + 1, head_dim)  # + the scratch slot

        def buffers() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            keys = torch.zeros(shape, dtype=dtype, device=device)
            values = torch.zeros(shape, dtype=dtype, device=device)
            pristine_keys = torch.zeros(*shape[:2], pristine, head_dim, dtype=dtype, device=device) if pristine else None
            return keys, values, pristine_keys

        super().__init__(layers=[BatchSinkLayer(self, *buffers()) for _ in range(text.num_hidden_layers)])
        self.inv_freq = static_inv_freq(text) if self.rerotate else None
        self.tables: list[SlotTable | None] = [None] * rows
        self.token_bytes = 2 * text.num_key_value_heads * head_dim * dtype.itemsize * text.num_hidden_layers
        self.dtype = dtype
        self.device = torch.device(device)
        self.current: _BatchStep | None = None

    @property
    def rows(self) -> int:
        return len(self.tables)

    def open(self, row: int) -> None:
        """A fresh story in ``row`` (whatever its buffers hold is never read: no slot of it is valid)."""
        if self.tables[row] is not None:
            raise ValueError(f"row {row} holds a story")
        self.tables[row] = SlotTable(RetentionPolicy(self.config), rerotate=self.rerotate,
                                     initial_capacity=self.capacity)

    def close(self, row: int) -> None:
        self.tables[row] = None

    def table(self, row: int) -> SlotTable:
        table = self.tables[row]
        if table is None:
            raise ValueError(f"row {row} holds no story")
        return table

    def seen(self, row: int) -> int:
        return self.table(row).seen

    def add_image(self, row: int, boi: int, eoi: int) -> None:
        """Declare an image at absolute positions ``boi`` .. ``eoi`` of ``row``'s story before appending it."""
        table = self.table(row)
        if boi < table.seen:
            raise ValueError(f"declare an image before appending it: BOI {boi} is already behind {table.seen} seen tokens")
        table.policy.add_image(ImageSpan(boi, eoi))

    def begin(self, rows: list[int], q: int, commit: bool) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Plan a forward of ``q`` tokens for each of ``rows`` (ascending).

        Returns the rows the forward covers (its batch, in order: ``rows`` themselves, or for a decode
        step their whole range, the others as dummies whose inputs and outputs are ignored), and its
        ``position_ids`` and 4-D mask.
        """
        if not rows or rows != sorted(set(rows)):
            raise ValueError(f"a forward covers distinct rows in ascending order, got {rows}")
        plans = [self.table(row).plan(q, commit=commit) for row in rows]
        for row, plan in zip(rows, plans):
            if plan.capacity > self.capacity:
                raise RuntimeError(f"row {row}: {plan.stored_after} tokens exceed the cache's {self.capacity} slots")
        for row, plan in zip(rows, plans):  # only once every row's plan is known to fit
            self.table(row).apply(plan)
        step = self.current = _BatchStep(rows, plans, self.capacity, self.device)
        seen = dict.fromkeys(step.covered, 0) | {row: p.seen for row, p in zip(rows, plans)}
        positions = torch.tensor([[seen[row] + i for i in range(q)] for row in step.covered], device=self.device)
        return step.covered, positions, self._mask(step)

    def _mask(self, step: _BatchStep) -> torch.Tensor:
        valid = np.zeros((len(step.covered), step.q, step.kv_length), dtype=bool)
        if step.decode:
            valid[:, 0, 0] = True  # a dummy row attends to one slot it never reads back, not to nothing (NaN)
            for row, plan in zip(step.rows, step.plans):
                valid[row - step.covered[0], 0, : plan.stored_after] = True
        else:
            held = step.kv_length - step.q
            valid[:, :, held:] = np.tril(np.ones((step.q, step.q), dtype=bool))
            for i, plan in enumerate(step.plans):
                valid[i, :, : plan.held] = True
        mask = torch.full(valid.shape, torch.finfo(self.dtype).min, dtype=self.dtype)
        mask.masked_fill_(torch.from_numpy(valid), 0.0)
        return mask[:, None].to(self.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if (self.current is None or key_states.shape[0] != len(self.current.covered)
                or key_states.shape[2] != self.current.q):
            raise RuntimeError("BatchSinkCache.update outside the forward planned by begin()")
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise RuntimeError("rows of a batch cache have different lengths: pass position_ids")

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.current.kv_length, 0

    def held_bytes(self, row: int) -> int:
        """Bytes of the keys and values attention reads for ``row`` (its held tokens, all layers)."""
        return self.token_bytes * self.table(row).stored

    def tensor_bytes(self) -> int:
        """Bytes of every buffer, allocated once for all rows (each row's scratch slot included)."""
        return sum(t.numel() * t.element_size() for layer in self.layers
                   for t in (layer.keys, layer.values, layer.pristine_keys) if t is not None)

    def row_bytes(self) -> int:
        """What one story's row costs: the batch's memory divided by its rows."""
        return self.tensor_bytes() // self.rows
