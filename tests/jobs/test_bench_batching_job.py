"""jobs/bench_batching.py through `ray job submit`, writing its results to the local S3 server (tiny shape)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from seedstory import storage
from tests.conftest import REPO_ROOT

from .test_bench_attention_job import RAY, TINY_SHAPE

pytestmark = pytest.mark.stack


def test_batching_benchmark_writes_the_table_and_plot(ray_head):
    out = f"s3://{ray_head.bucket}/bench-batching-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT), "--",
         "python", "jobs/bench_batching.py", "--out", out, "--config", "tiny", "--batches", "1,3", "--segments", "2",
         "--text-tokens", "3", "--window", "48", "--caption-tokens", "4", "--stories-per-row", "2",
         "--arrive-every", "2", "--fit-segments", "20", "--threads", "1", *TINY_SHAPE],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    report = json.loads(storage.read_bytes(storage.join(out, "batching.json")))
    assert storage.read_bytes(storage.join(out, "batching.png")).startswith(b"\x89PNG")
    assert report["config"]["workload"]["segments"] == 2 and report["config"]["workload"]["window"] == 48
    assert [b["batch"] for b in report["batches"]] == [1, 3]
    for row, batch in zip(report["batches"], (1, 3)):
        assert row["stories"] == 2 * batch and row["stories_per_s"] > 0 and row["tokens_per_s"] > 0
        assert 0 < row["token_latency_p50_s"] <= row["token_latency_p95_s"]
        assert row["peak_rss_bytes"] > row["kv_bytes"] > 0
        assert row["decode_bytes_read"] > 0 and 0 < row["decode_tokens_per_s"] < row["decode_ceiling_tokens_per_s"]
    one, three = report["batches"]
    assert three["kv_bytes"] == 3 * one["kv_bytes"], "a batch's KV memory is its rows, allocated once"
    fit = report["fit"]
    assert fit["dense_stories"] == 4 and fit["mm_sink_stories"] >= fit["dense_stories"]
    # Each row also holds one scratch slot.
    assert fit["ratio"] == pytest.approx((fit["dense_tokens_per_story"] + 1) / (fit["mm_sink_capacity"] + 1))
    for name, target in report["targets"].items():
        assert f"{'PASS' if target['ok'] else 'MISS'} {name}" in done.stdout


def test_in_process_the_benchmark_runs_where_ray_is_not_installed(tmp_path):
    """A bare GPU machine has no Ray: ``--in-process`` measures every batch size in the job's own process."""
    argv = ["jobs/bench_batching.py", "--in-process", "--out", str(tmp_path), "--config", "tiny", "--batches", "1,2",
            "--segments", "2", "--text-tokens", "3", "--window", "48", "--caption-tokens", "4",
            "--stories-per-row", "1", "--arrive-every", "1", "--fit-segments", "20", "--threads", "1",
            "--repeats", "3", *TINY_SHAPE]
    without_ray = f"import runpy, sys; sys.modules['ray'] = None; sys.argv = {argv!r}; " \
                  "runpy.run_path(sys.argv[0], run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", without_ray], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "batching.json").read_text())
    assert (tmp_path / "batching.png").read_bytes().startswith(b"\x89PNG")
    assert report["config"]["device"] == "cpu" and [b["batch"] for b in report["batches"]] == [1, 2]
    assert report["config"]["repeats"] == 3 and done.stdout.count("batch   1:") == 3
    for row in report["batches"]:
        assert 0 < row["decode_bandwidth_fraction"] and row["copy_bandwidth_bytes_per_s"] > 0
        assert f"{row['decode_bandwidth_fraction']:.3f} of the bandwidth ceiling" in done.stdout
        runs = row["runs"]
        assert len(runs) == 3 and row["tokens_per_s"] == sorted(run["tokens_per_s"] for run in runs)[1]
        assert row["token_latency_p95_s"] == sorted(run["token_latency_p95_s"] for run in runs)[1]
    assert report["fit"]["dense_stories"] == 4, "the KV fit is computed on the meta device, whatever the model"
