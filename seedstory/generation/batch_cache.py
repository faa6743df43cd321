"""The KV cache of many stories sharing one forward: a fixed block of rows, one story's sink cache per row.

Each row has its own ``SlotTable`` (kept set, slot layout, positions, anchors), so a story in a batch
keeps exactly what it would keep alone. The buffers are ``[rows, kv_heads, capacity + 1, head_dim]`` per
layer, allocated once: a bounded mode's capacity is its kept set's bound, dense mode's is
``dense_capacity`` tokens. Memory is therefore fixed by ``rows x capacity`` and a story either has a
row or waits.

One forward advances every story in the batch by its own next tokens (``begin`` plans it). Its tokens
travel packed, one sequence ``[1, T]``: the projections and the MLP read every weight once for all of
them, whatever mix of decoding and chunks the step holds. Attention is per group, the rows that
advance by the same number ``q`` of tokens (``batch_attention``, the attention implementation the
packed forward runs under):

- decoding (``q = 1``, committed): the group covers the whole row range from the first decoding
  row to the last, so attention reads the buffers in place (a view, never a gathered copy of every
  row's cache). Each decoding row's plan names the slot its token goes to; a row in the range that
  is not decoding (a story in a chunk of this forward, or no story) is carried as a masked dummy
  whose token goes to the row's scratch slot, one slot past the capacity, which no mask ever exposes.
  The view ends at the group's longest row and the model's own attention reads it, or, where that is
  slow (a CPU in bf16), it is of whole rows and ``decode_attention`` reads it;
- chunks (prompt pieces, image blocks, the image-query preview): each row's held keys are gathered
  and the chunk appended, causal within the chunk; what the row's policy keeps is then stored.

Each row's queries take that row's own absolute positions; a group's mask is additive (0 or the
dtype's minimum) and goes, group by group, to the model's own attention implementation (eager or
SDPA), but for decoding over whole rows. A row is zeroed when a story opens it, so nothing its
previous story left (a non-finite value included) reaches a masked slot's product.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from seedstory.config.generation import AttentionSinkConfig
from seedstory.generation.retention import ImageSpan, RetentionPolicy
from seedstory.generation.rope import static_inv_freq
from seedstory.generation.sink_cache import relayout
from seedstory.generation.slots import SlotTable, StepPlan

BATCH_ATTENTION = "seedstory-batch"


class ForwardGroup:
    """Rows of a forward that advance by the same ``q`` tokens: their plans, the rows they cover, their
    place in the packed sequence (``offset``; covered row ``i``'s tokens start at ``offset + i * q``)."""

    def __init__(self, rows: list[int], plans: list[StepPlan], scratch: int, offset: int,
                 device: torch.device, whole_rows: bool) -> None:
        self.rows = rows
        self.plans = plans
        self.q = plans[0].q
        self.offset = offset
        self.held = max(p.held for p in plans)
        self.decode = self.q == 1 and all(p.decode_slot is not None for p in plans)
        if not self.decode and any(p.decode_slot is not None for p in plans):
            raise RuntimeError("a group mixes decode plans with chunk plans: they read different slots")
        self.whole_rows = self.decode and whole_rows
        if self.decode:
            self.covered = list(range(rows[0], rows[-1] + 1))
            slots = dict.fromkeys(self.covered, scratch) | {row: p.decode_slot for row, p in zip(rows, plans)}
            self.decode_slots = torch.tensor([slots[row] for row in self.covered], device=device)
            self.kv_length = scratch + 1 if self.whole_rows else max(p.stored_after for p in plans)
        else:
            self.covered = rows
            self.kv_length = self.held + self.q
        self.row_index = torch.tensor(self.covered, device=device)
        contiguous = self.covered == list(range(self.covered[0], self.covered[-1] + 1))
        # Rows in one run are read as a view (a decoding group always is one); others are gathered.
        self.read = slice(self.covered[0], self.covered[-1] + 1) if contiguous else self.row_index
        self.tokens = len(self.covered) * self.q

    def start(self, row: int) -> int:
        """Where ``row``'s tokens start in the packed sequence."""
        return self.offset + self.covered.index(row) * self.q

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """This group's part of a packed ``[1, heads, T, dim]`` tensor, as ``[covered, heads, q, dim]``."""
        part = packed[0, :, self.offset : self.offset + self.tokens]
        return part.unflatten(1, (len(self.covered), self.q)).transpose(0, 1)


@dataclass(eq=False)
class BatchForward:
    """One packed forward: its groups, every token's position ``[1, T]``, and per group the mask and, for
    the layer being run, the keys and values its attention reads (left there by the layer's ``update``)."""

    groups: list[ForwardGroup]
    positions: torch.Tensor
    masks: list[torch.Tensor]
    attention: str | None = None  # the model's own implementation, which each group's attention runs
    attended: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.positions.shape[1]


def batch_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, *, batch_forward: BatchForward, **kwargs
                    ) -> tuple[torch.Tensor, None]:
    """Attention of a packed forward: each group's queries attend to that group's rows only, through the
    model's own attention implementation. Returns ``[1, T, heads, dim]``, as every implementation does."""
    if batch_forward.attention is None:
        raise RuntimeError("a packed forward runs under packed_attention(), which names the model's own attention")
    eager = sys.modules[type(module).__module__].eager_attention_forward  # each model's file defines its own
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(batch_forward.attention, eager)
    outputs = []
    for group, mask, (keys, values) in zip(batch_forward.groups, batch_forward.masks, batch_forward.attended):
        if group.whole_rows:
            out = decode_attention(group.unpack(query), keys, values, mask, kwargs["scaling"])
        else:
            out, _ = attend(module, group.unpack(query), keys, values, mask, **kwargs)
        outputs.append(out.flatten(0, 1))
    return torch.cat(outputs)[None], None


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     scaling: float) -> torch.Tensor:
    """One query per row against whole rows of the buffers, read in place: ``[rows, 1, heads, dim]``.

    Decoding is bound by how fast attention reads the cache. On a CPU in bf16, SDPA's kernel reads one
    query's cache at about a third of the bandwidth of two batched products over whole rows. Whole,
    because each row is then one block, which the products read where it lies; a view that ends
    before the rows' end, the CPU's batched product copies first. Eager attention would also repeat
    grouped-query attention's keys in a copy; here a key-value head's query heads share its keys."""
    rows, heads, _, dim = query.shape
    queries = query.reshape(rows, keys.shape[1], -1, dim)
    scores = torch.matmul(queries, keys.transpose(2, 3)) * scaling + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, values).view(rows, heads, 1, dim).transpose(1, 2)


AttentionInterface.register(BATCH_ATTENTION, batch_attention)


_SWITCHED = threading.Lock()


@contextmanager
def packed_attention(config: PreTrainedConfig, forward: BatchForward) -> Iterator[None]:
    """Run the model's forwards under ``batch_attention`` (it has no mask of its own to build), each
    group's attention under the implementation the model was configured with.

    The switch is the model config's, so packed forwards in one process take turns: two engines may
    share a model (a writer re-deployed with the same weights finishes its stories while the next one
    starts), and one must not run while the other has the model switched. Nothing but an engine may
    run a model while an engine writes with it."""
    with _SWITCHED:
        forward.attention = config._attn_implementation
        config._attn_implementation = BATCH_ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = forward.attention


class BatchSinkLayer(CacheLayerMixin):
    """One layer's buffers for every row; the cache's current forward says what to read and write."""

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
        """Store every group's new keys and values; leave on the forward what each group's attention reads."""
        forward = self.owner.current
        forward.attended = [self._group(group, group.unpack(key_states), group.unpack(value_states))
                            for group in forward.groups]
        return key_states, value_states

    def _group(self, group: ForwardGroup, key_states: torch.Tensor, value_states: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        for row, plan in zip(group.rows, group.plans):
            pristine = self.pristine_keys[row : row + 1] if self.pristine_keys is not None else None
            relayout(self.keys[row : row + 1], self.values[row : row + 1], pristine, plan, self.owner.inv_freq)
        if group.decode:
            self.keys[group.row_index, :, group.decode_slots] = key_states[:, :, 0]
            self.values[group.row_index, :, group.decode_slots] = value_states[:, :, 0]
            return self.keys[group.read, :, : group.kv_length], self.values[group.read, :, : group.kv_length]
        keys = torch.cat([self.keys[group.read, :, : group.held], key_states], dim=2)
        values = torch.cat([self.values[group.read, :, : group.held], value_states], dim=2)
        for i, (row, plan) in enumerate(zip(group.rows, group.plans)):
            if plan.stored_after > plan.held:
                keep = plan.index("chunk_keep", key_states.device) if plan.chunk_keep is not None else slice(None)
                self.keys[row, :, plan.held : plan.stored_after] = key_states[i][:, keep]
                self.values[row, :, plan.held : plan.stored_after] = value_states[i][:, keep]
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        raise RuntimeError("a packed forward's groups have their own masks: run it under batch_attention")

    def get_seq_length(self) -> int:
        raise RuntimeError("rows of a batch cache have different lengths: pass position_ids")

    def get_max_length(self) -> int:
        return self.owner.capacity


class BatchSinkCache(Cache):
    """Dense / window / sink / mm-sink KV cache of ``rows`` stories, absolute or re-rotated positions.

    ``decode_whole_rows``: decoding reads whole rows with ``decode_attention`` rather than the rows'
    longest prefix with the model's attention. None chooses it where it is the faster: on a CPU in
    bf16, whose SDPA kernel reads one query's cache slowly (in fp32 that kernel is the faster).
    """

    def __init__(self, config: AttentionSinkConfig, model_config: PreTrainedConfig, rows: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu", decode_whole_rows: bool | None = None
                 ) -> None:
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
        if decode_whole_rows is None:
            decode_whole_rows = self.device.type == "cpu" and dtype == torch.bfloat16
        self.decode_whole_rows = decode_whole_rows
        self.current: BatchForward | None = None

    @property
    def rows(self) -> int:
        return len(self.tables)

    def open(self, row: int) -> None:
        """A fresh story in ``row``, its buffers zeroed: attention multiplies masked slots by zero, and a
        non-finite value the previous story left there would survive that product."""
        if self.tables[row] is not None:
            raise ValueError(f"row {row} holds a story")
        for layer in self.layers:
            for buffer in (layer.keys, layer.values, layer.pristine_keys):
                if buffer is not None:
                    buffer[row].zero_()
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

    def begin(self, groups: Sequence[tuple[list[int], int, bool]]) -> BatchForward:
        """Plan one packed forward: each group is ``(rows, q, commit)``, ``q`` new tokens for each of its
        rows (ascending; a row in one group only).

        A group covers its rows themselves, or for decoding their whole range, the others as dummies whose
        inputs and outputs are ignored; the packed sequence holds each group's covered rows' tokens in turn.
        """
        named = [row for rows, _, _ in groups for row in rows]
        if not groups or len(named) != len(set(named)) or any(not rows or rows != sorted(rows) for rows, _, _ in groups):
            raise ValueError(f"a forward's groups cover distinct rows, each in ascending order, got {list(groups)}")
        plans = [[self.table(row).plan(q, commit=commit) for row in rows] for rows, q, commit in groups]
        for (rows, _, _), group_plans in zip(groups, plans):
            for row, plan in zip(rows, group_plans):
                if plan.capacity > self.capacity:
                    raise RuntimeError(f"row {row}: {plan.stored_after} tokens exceed the cache's {self.capacity} slots")
        built, offset = [], 0
        for (rows, _, _), group_plans in zip(groups, plans):  # only once every row's plan is known to fit
            for row, plan in zip(rows, group_plans):
                self.table(row).apply(plan)
            built.append(ForwardGroup(rows, group_plans, self.capacity, offset, self.device,
                                      self.decode_whole_rows))
            offset += built[-1].tokens
        positions = torch.cat([self._positions(group) for group in built])[None].to(self.device)
        self.current = BatchForward(built, positions, [self._mask(group) for group in built])
        return self.current

    @staticmethod
    def _positions(group: ForwardGroup) -> torch.Tensor:
        seen = dict.fromkeys(group.covered, 0) | {row: p.seen for row, p in zip(group.rows, group.plans)}
        return torch.tensor([seen[row] + i for row in group.covered for i in range(group.q)])

    def _mask(self, group: ForwardGroup) -> torch.Tensor:
        valid = np.zeros((len(group.covered), group.q, group.kv_length), dtype=bool)
        if group.decode:
            valid[:, 0, 0] = True  # a dummy row attends to one slot it never reads back, not to nothing (NaN)
            for row, plan in zip(group.rows, group.plans):
                valid[row - group.covered[0], 0, : plan.stored_after] = True
        else:
            valid[:, :, group.held :] = np.tril(np.ones((group.q, group.q), dtype=bool))
            for i, plan in enumerate(group.plans):
                valid[i, :, : plan.held] = True
        mask = torch.full(valid.shape, torch.finfo(self.dtype).min, dtype=self.dtype)
        mask.masked_fill_(torch.from_numpy(valid), 0.0)
        return mask[:, None].to(self.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.current is None or key_states.shape[0] != 1 or key_states.shape[2] != self.current.tokens:
            raise RuntimeError("BatchSinkCache.update outside the packed forward planned by begin()")
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise RuntimeError("rows of a batch cache have different lengths: pass position_ids")

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        raise RuntimeError("a packed forward's groups have their own masks: run it under batch_attention")

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
