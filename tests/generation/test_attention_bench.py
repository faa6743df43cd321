"""The benchmark's mechanics on a tiny shape, in-process (the full run is jobs/bench_attention.py)."""

from __future__ import annotations

import pytest

from seedstory.generation import attention_bench as bench

TINY = bench.BenchSettings(config="tiny", overrides=(), segments=5, text_tokens=3, window=48,
                           recompute_segments=2, caption_tokens=4, seed=0)


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return bench.run(TINY)


@pytest.fixture(scope="module")
def modes(records) -> dict[str, list[dict]]:
    return bench.by_mode(records, "rerotate")


def test_both_position_modes_run_and_pick_a_default(records, modes):
    assert set(records) == {"dense", "window", "recompute-window", "sink/absolute", "sink/rerotate",
                            "mm-sink/absolute", "mm-sink/rerotate"}
    assert modes["mm-sink"] is records["mm-sink/rerotate"] and modes["sink"] is records["sink/rerotate"]
    held = "kv_held_bytes"  # the same kept set; rerotate also allocates pristine keys
    same_work = [r[held] for r in records["mm-sink/absolute"]] == [r[held] for r in modes["mm-sink"]]
    assert same_work


def test_every_mode_records_every_segment_in_the_issue_schema(modes):
    for records in modes.values():
        assert [r["index"] for r in records] == list(range(5))
        for record in records:
            assert set(record) == {"index", "wall_s", "token_latency_s", "decode_s", "context_s", "image_s",
                                   "kv_bytes", "kv_held_bytes", "peak_rss_bytes"}
            assert record["wall_s"] > 0 and record["token_latency_s"] > 0
            parts = record["decode_s"] + record["context_s"] + record["image_s"]
            assert 0 < parts <= record["wall_s"] and min(record["context_s"], record["image_s"]) > 0
            assert record["kv_bytes"] > 0 and record["peak_rss_bytes"] > 0
    dense, window = modes["dense"], modes["window"]
    assert [r["kv_bytes"] for r in dense] == sorted(r["kv_bytes"] for r in dense)
    assert dense[-1]["kv_bytes"] > window[-1]["kv_bytes"] == window[-2]["kv_bytes"]


def test_summary_table_targets_and_plot(modes):
    targets = bench.check_targets(modes)
    assert set(targets) >= {"mm_sink_latency_flat", "mm_sink_kv_vs_dense_at_end", "recompute_window_time_vs_mm_sink"}
    assert all(isinstance(t["ok"], bool) for t in targets.values())
    assert [row["mode"] for row in bench.table2(modes)] == list(bench.MODES)
    assert bench.plot(modes).startswith(b"\x89PNG")
    default, reason = bench.pick_positions(modes["mm-sink"], modes["mm-sink"])
    assert default == "rerotate" and "+0.0%" in reason
    slower = [{**r, "token_latency_s": 2 * r["token_latency_s"]} for r in modes["mm-sink"]]
    assert bench.pick_positions(modes["mm-sink"], slower)[0] == "absolute"
