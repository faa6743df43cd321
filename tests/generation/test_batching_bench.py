"""The batching benchmark's bandwidth ceiling: what a decode forward must read, at the measured copy rate."""

from __future__ import annotations

import pytest

from seedstory.generation import batching_bench
from seedstory.generation.story_engine import ForwardTally

from .test_story import tiny_mllm


def test_the_ceiling_reads_the_weights_once_per_forward_and_each_story_held_keys_and_values():
    model = tiny_mllm()
    llm = model.llm
    assert llm.get_output_embeddings().weight.data_ptr() != llm.get_input_embeddings().weight.data_ptr()
    # The output head is read whole; the embedding table only at the batch's token ids.
    weights = 4 * (sum(p.numel() for p in llm.parameters()) - llm.get_input_embeddings().weight.numel())
    assert batching_bench.decode_weight_bytes(model) == weights
    tally = ForwardTally(forwards=10, stories=40, seconds=2.0, kv_bytes=5_000)
    found = batching_bench.decode_ceiling(model, tally, bandwidth=1e9)
    ceiling_s = (10 * weights + 5_000) / 1e9
    assert found["decode_tokens_per_s"] == 20
    assert found["decode_ceiling_tokens_per_s"] == pytest.approx(40 / ceiling_s)
    assert found["decode_bandwidth_fraction"] == pytest.approx(ceiling_s / 2.0)


def test_repeated_runs_give_each_headline_figure_its_median_and_every_other_figure_one_real_runs():
    runs = [{"tokens_per_s": t, "stories_per_s": t / 100, "token_latency_p50_s": p / 2, "token_latency_p95_s": p,
             "wall_s": w} for t, p, w in ((50.0, 0.030, 1.0), (70.0, 0.020, 2.0), (60.0, 0.050, 3.0))]
    row = batching_bench.median_run(runs)
    assert (row["tokens_per_s"], row["token_latency_p95_s"], row["token_latency_p50_s"]) == (60.0, 0.030, 0.015)
    assert row["wall_s"] == 3.0, "the other figures are the run of median throughput's"
    assert [run["tokens_per_s"] for run in row["runs"]] == [50.0, 70.0, 60.0] and "wall_s" not in row["runs"][0]
