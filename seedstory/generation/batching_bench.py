"""Mechanics of the batching benchmark: stories arriving over time into one engine, one batch size per process.

The model is the attention benchmark's (random weights that never choose BOI or EOS, so every
segment is exactly ``text_tokens`` text tokens and a forced image, and every batch does the same
work per story). Story k arrives at engine step ``k * arrive_every``; ``stories_per_row`` stories per
row arrive in all, so rows free up and are re-filled while others write (continuous batching).

Throughput counts text tokens (what a reader gets); latency is the gap between consecutive text tokens
of one story within a segment, as the story sees it: it includes the chunks (other stories' prompts,
image queries and image blocks) that its step's forward carried. Decoding is bandwidth bound, so
its tokens/s is also given as a fraction of the ceiling the machine's own measured copy bandwidth sets.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from seedstory import figures
from seedstory.config.generation import AttentionSinkConfig, StoryConfig
from seedstory.generation import attention_bench
from seedstory.generation.story import StoryStart
from seedstory.generation.story_engine import ForwardTally, StoryEngine


@dataclass(frozen=True)
class BatchingSettings:
    workload: attention_bench.BenchSettings  # the model and each story's length, as in the attention benchmark
    stories_per_row: int
    arrive_every: int
    threads: int
    device: str = "cpu"
    dtype: str = "float32"  # the random weights' dtype, and so the cache's

    def cache(self, mode: str = "mm-sink", dense_capacity: int = 8192) -> AttentionSinkConfig:
        return AttentionSinkConfig(mode=mode, window=self.workload.window, dense_capacity=dense_capacity)

    def story(self, segments: int | None = None) -> StoryConfig:
        return StoryConfig(segments=segments or self.workload.segments, max_text_tokens=self.workload.text_tokens,
                           on_text_budget="force-image")

    def opening(self, model, index: int) -> StoryStart:
        return attention_bench.opening(model, self.workload.caption_tokens, self.workload.seed + index)

    def model(self, device: str | None = None):
        return attention_bench.build_model(self.workload, device or self.device, getattr(torch, self.dtype))

    def engine(self, model, max_stories: int, cache: AttentionSinkConfig | None = None) -> StoryEngine:
        return StoryEngine(model, cache or self.cache(), max_stories=max_stories, eos_id=attention_bench.EOS_ID,
                           separator_ids=[attention_bench.SEPARATOR_ID])


def run_batch(settings: BatchingSettings, batch: int) -> dict:
    """One batch size: every story to its end; throughput, token gaps, memory, and decoding against the
    bandwidth ceiling."""
    torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    if device.type != "cpu":
        torch.accelerator.reset_peak_memory_stats(device)
    model = settings.model()
    engine = settings.engine(model, batch)
    count = batch * settings.stories_per_row
    arrivals = [k * settings.arrive_every for k in range(count)]
    stories = []
    began = time.perf_counter()
    while len(stories) < count or not engine.idle:
        while len(stories) < count and arrivals[len(stories)] <= engine.steps:
            stories.append(engine.submit(settings.opening(model, len(stories)), settings.story()))
        engine.step()
    wall = time.perf_counter() - began
    for story in stories:
        if len(story.segments) != settings.workload.segments or any(
                len(s.text_ids) != settings.workload.text_tokens for s in story.segments):
            raise RuntimeError(f"story {story.id} did not have the fixed workload ({story.outcome})")
    gaps = np.concatenate([np.diff(times) for story in stories for times in story.token_times])
    tokens = sum(len(s.text_ids) for story in stories for s in story.segments)
    decodes, chunks = engine.decodes, engine.chunks
    result = {
        "batch": batch,
        "stories": count,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "stories_per_s": count / wall,
        "token_latency_p50_s": float(np.percentile(gaps, 50)),
        "token_latency_p95_s": float(np.percentile(gaps, 95)),
        "steps": engine.steps,
        "decode_forwards": decodes.forwards,
        "stories_per_decode_forward": per_forward(decodes.stories, decodes),
        "decode_forward_s": per_forward(decodes.seconds, decodes),
        "dummy_rows_per_decode_forward": per_forward(decodes.dummy_rows, decodes),
        "decode_s": decodes.seconds,
        "chunk_forwards": chunks.forwards,
        "chunk_forward_s": per_forward(chunks.seconds, chunks),
        "tokens_per_chunk_forward": per_forward(chunks.tokens, chunks),
        "chunk_s": chunks.seconds,
        "text_tokens_beside_chunks": chunks.decoding,
        "text_tokens": tokens,
        "kv_bytes": engine.cache.tensor_bytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        **decode_ceiling(model, decodes, copy_bandwidth(device)),
    }
    if device.type != "cpu":
        result["peak_device_bytes"] = torch.accelerator.max_memory_allocated(device)
    return result


def per_forward(total: float, tally: ForwardTally) -> float | None:
    """``total`` per forward of ``tally``'s kind; None when none ran (under load every forward may carry a chunk)."""
    return total / tally.forwards if tally.forwards else None


HEADLINE = ("tokens_per_s", "stories_per_s", "token_latency_p50_s", "token_latency_p95_s")


def median_run(runs: list[dict]) -> dict:
    """One batch size's row over repeated runs: the median of each headline figure, every other figure
    from the run of median throughput (a real run), and each run's headline figures."""
    middle = sorted(runs, key=lambda run: run["tokens_per_s"])[(len(runs) - 1) // 2]
    return middle | {key: float(np.median([run[key] for run in runs])) for key in HEADLINE} | {
        "runs": [{key: run[key] for key in HEADLINE} for run in runs]}


def decode_weight_bytes(model) -> int:
    """Weight bytes one decode forward reads: the LLM's, less its embedding table (a lookup reads B rows)."""
    embedding = model.llm.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.llm.parameters())
    return total - embedding.numel() * embedding.element_size()


def decode_ceiling(model, decodes: ForwardTally, bandwidth: float) -> dict:
    """Decoding's tokens/s against the memory-bandwidth ceiling: the decode forwards as if each read only
    what it must (the weights once, each story's held keys and values once) at ``bandwidth``. None where
    no forward carried text tokens alone (every one carried a chunk beside them)."""
    if not decodes.forwards:
        return {"copy_bandwidth_bytes_per_s": bandwidth, "decode_bytes_read": 0, "decode_tokens_per_s": None,
                "decode_ceiling_tokens_per_s": None, "decode_bandwidth_fraction": None}
    must_read = decodes.forwards * decode_weight_bytes(model) + decodes.kv_bytes
    ceiling_s = must_read / bandwidth
    return {
        "copy_bandwidth_bytes_per_s": bandwidth,
        "decode_bytes_read": must_read,
        "decode_tokens_per_s": decodes.stories / decodes.seconds,
        "decode_ceiling_tokens_per_s": decodes.stories / ceiling_s,
        "decode_bandwidth_fraction": ceiling_s / decodes.seconds,
    }


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second a device-to-device copy moves (read plus written), the best of ``repeats``:
    the ceiling a bandwidth-bound forward can reach on this machine, measured rather than quoted."""
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats + 1):  # the first copy warms up (page faults on a CPU, the allocator on a GPU)
        began = time.perf_counter()
        target.copy_(source)
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * nbytes / best


def kv_fit(settings: BatchingSettings, segments: int) -> dict:
    """Stories of ``segments`` segments that fit in one KV budget: mm-sink rows against dense rows sized for them.

    Only shapes matter, so the model and the caches are built on the meta device (no memory, any size).
    """
    model = settings.model("meta")
    engine = settings.engine(model, 1)
    longest = engine.longest(settings.opening(model, 0), settings.story(segments))
    sink_row = engine.cache.row_bytes()
    dense_row = settings.engine(model, 1, settings.cache("dense", longest)).cache.row_bytes()
    budget = dense_row * 4
    return {"segments": segments, "dense_tokens_per_story": longest, "mm_sink_capacity": engine.cache.capacity,
            "budget_bytes": budget, "dense_stories": budget // dense_row, "mm_sink_stories": budget // sink_row,
            "ratio": dense_row / sink_row}


def plot(batches: list[dict]) -> bytes:
    sizes = [b["batch"] for b in batches]
    figure, (throughput, latency, cost) = figures.subplots(1, 3, figsize=(16, 4.2))
    throughput.plot(sizes, [b["tokens_per_s"] for b in batches], marker="o", label="measured")
    throughput.plot(sizes, [batches[0]["tokens_per_s"] * s for s in sizes], linestyle=":", label="linear in batch")
    throughput.set(xscale="log", xlabel="stories per batch", ylabel="text tokens / s", title="Throughput")
    throughput.legend()
    for key, label in (("token_latency_p50_s", "p50"), ("token_latency_p95_s", "p95")):
        latency.plot(sizes, [1e3 * b[key] for b in batches], marker="o", label=label)
    latency.set(xscale="log", xlabel="stories per batch", ylabel="ms between a story's tokens",
                title="Per-token latency")
    latency.legend()
    labels = [str(size) for size in sizes]
    decode = [1e3 * b["decode_s"] / b["text_tokens"] for b in batches]
    chunks = [1e3 * b["chunk_s"] / b["text_tokens"] for b in batches]
    cost.bar(labels, decode, label="forwards of text tokens only")
    cost.bar(labels, chunks, bottom=decode, label="forwards carrying chunks (prompts, image queries, image blocks)")
    cost.set(xlabel="stories per batch", ylabel="ms of forwards per text token", title="Where the time goes")
    cost.legend(fontsize=8)
    return figures.png(figure)
