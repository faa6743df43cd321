"""Mechanics of the batching benchmark: stories arriving over time into one engine, one batch size per process.

The model is the attention benchmark's (random weights that never choose BOI or EOS, so every
segment is exactly ``text_tokens`` text tokens and a forced image, and every batch does the same
work per story). Story k arrives at engine step ``k * arrive_every``; ``stories_per_row`` stories per
row arrive in all, so rows free up and are re-filled while others write (continuous batching).

Throughput counts text tokens (what a reader gets); latency is the gap between consecutive text tokens
of one story within a segment, as the story sees it: it includes the chunk forwards (other stories'
prompts, image queries and image blocks) that ran in the same step.
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
from seedstory.generation.batch_cache import BatchSinkCache
from seedstory.generation.story import StoryStart
from seedstory.generation.story_engine import StoryEngine


@dataclass(frozen=True)
class BatchingSettings:
    workload: attention_bench.BenchSettings  # the model and each story's length, as in the attention benchmark
    stories_per_row: int
    arrive_every: int
    threads: int

    def cache(self, mode: str = "mm-sink", dense_capacity: int = 8192) -> AttentionSinkConfig:
        return AttentionSinkConfig(mode=mode, window=self.workload.window, dense_capacity=dense_capacity)

    def story(self, segments: int | None = None) -> StoryConfig:
        return StoryConfig(segments=segments or self.workload.segments, max_text_tokens=self.workload.text_tokens,
                           on_text_budget="force-image")

    def opening(self, model, index: int) -> StoryStart:
        return attention_bench.opening(model, self.workload.caption_tokens, self.workload.seed + index)


def run_batch(settings: BatchingSettings, batch: int) -> dict:
    """One batch size: every story to its end; throughput, token gaps, KV bytes and this process's peak RSS."""
    torch.set_num_threads(settings.threads)
    model = attention_bench.build_model(settings.workload)
    engine = StoryEngine(model, settings.cache(), max_stories=batch, eos_id=attention_bench.EOS_ID,
                         separator_ids=[attention_bench.SEPARATOR_ID])
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
    return {
        "batch": batch,
        "stories": count,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "stories_per_s": count / wall,
        "token_latency_p50_s": float(np.percentile(gaps, 50)),
        "token_latency_p95_s": float(np.percentile(gaps, 95)),
        "steps": engine.steps,
        "decode_forwards": engine.decodes.forwards,
        "stories_per_decode_forward": engine.decodes.stories / engine.decodes.forwards,
        "decode_forward_s": engine.decodes.seconds / engine.decodes.forwards,
        "dummy_rows_per_decode_forward": engine.decodes.dummy_rows / engine.decodes.forwards,
        "decode_s": engine.decodes.seconds,
        "chunk_forwards": engine.chunks.forwards,
        "chunk_s": engine.chunks.seconds,
        "text_tokens": tokens,
        "kv_bytes": engine.cache.tensor_bytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def kv_fit(settings: BatchingSettings, segments: int) -> dict:
    """Stories of ``segments`` segments that fit in one KV budget: mm-sink rows against dense rows sized for them."""
    model = attention_bench.build_model(settings.workload)
    engine = StoryEngine(model, settings.cache(), max_stories=1, eos_id=attention_bench.EOS_ID,
                         separator_ids=[attention_bench.SEPARATOR_ID])
    longest = engine.longest(settings.opening(model, 0), settings.story(segments))
    sink_row = engine.cache.row_bytes()
    dense_row = BatchSinkCache(settings.cache("dense", longest), model.llm.config, 1,
                               dtype=engine.cache.dtype).row_bytes()
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
    cost.bar(labels, decode, label="decode forwards")
    cost.bar(labels, chunks, bottom=decode, label="chunk forwards (prompts, image queries, image blocks)")
    cost.set(xlabel="stories per batch", ylabel="ms of forwards per text token", title="Where the time goes")
    cost.legend(fontsize=8)
    return figures.png(figure)
