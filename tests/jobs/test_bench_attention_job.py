"""jobs/bench_attention.py through `ray job submit`, writing its results to the local S3 server (tiny shape)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from seedstory import storage
from seedstory.generation.attention_bench import MODES
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack

RAY = str(Path(sys.executable).parent / "ray")
TINY_SHAPE = ("model.image_tokens=16", "model.input_resampler.num_queries=16", "model.llm.hidden_size=64",
              "model.llm.intermediate_size=128", "model.llm.num_layers=2", "model.llm.num_heads=4",
              "model.llm.num_kv_heads=4")


def test_benchmark_job_writes_json_plot_and_summary_to_object_storage(ray_head):
    out = f"s3://{ray_head.bucket}/bench-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT),
         "--runtime-env-json", json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1"}}), "--",
         "python", "jobs/bench_attention.py", "--out", out, "--config", "tiny", "--segments", "5",
         "--text-tokens", "2", "--window", "48", "--recompute-segments", "2", "--caption-tokens", "4",
         "--threads", "1", *TINY_SHAPE],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    result = json.loads(storage.read_bytes(storage.join(out, "attention.json")))
    assert set(result["modes"]) == set(MODES)
    assert result["config"]["window"] == 48 and result["config"]["positions"] in ("absolute", "rerotate")
    for mode in MODES:
        segments = result["modes"][mode]["segments"]
        assert [s["index"] for s in segments] == list(range(5))
        assert all(s["wall_s"] > 0 and s["kv_bytes"] > 0 and s["peak_rss_bytes"] > 0 for s in segments)
    summary = json.loads(storage.read_bytes(storage.join(out, "summary.json")))
    assert [row["mode"] for row in summary["table2"]] == list(MODES)
    for name, target in summary["targets"].items():
        assert f"{'PASS' if target['ok'] else 'MISS'} {name}" in done.stdout
    assert storage.read_bytes(storage.join(out, "attention.png")).startswith(b"\x89PNG")
