"""jobs/bench_attention.py through `ray job submit`, writing its results to the local S3 server (tiny shape)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from seedstory import storage
from seedstory.data.toyworld.generate import write_toy_world
from seedstory.generation.attention_bench import MODES
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack

RAY = str(Path(sys.executable).parent / "ray")
TINY_SHAPE = ("model.image_tokens=16", "model.input_resampler.num_queries=16", "model.llm.hidden_size=64",
              "model.llm.intermediate_size=128", "model.llm.num_layers=2", "model.llm.num_heads=4",
              "model.llm.num_kv_heads=4")


@pytest.fixture(scope="module")
def bench(ray_head, story_models, weights_cache):
    """One submission measuring both parts: time and memory at the tiny shape, quality on registered models."""
    root = f"s3://{ray_head.bucket}/bench-{uuid.uuid4().hex[:6]}"
    toy = story_models.config.data.toy.model_copy(update={"stories": 8, "val_fraction": 0.0, "test_fraction": 0.4,
                                                           "min_frames": 4, "max_frames": 5})
    summary = write_toy_world(toy, f"{root}/toy")
    runtime_env = {"env_vars": {"SEEDSTORY_WEIGHTS_CACHE": str(weights_cache), "HF_HUB_OFFLINE": "1"}}
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "jobs/bench_attention.py", "--out", f"{root}/bench", "--config", "tiny", "--segments", "5",
         "--text-tokens", "2", "--window", "48", "--recompute-segments", "2", "--caption-tokens", "4",
         "--threads", "1", "--quality", "--stories", "2", "--lengths", "2,6", *TINY_SHAPE, *story_models.overrides,
         f"data.test_jsonl=[{summary['jsonl']['test']}]", f"data.image_root={summary['image_root']}",
         "eval.kid_subsets=5"],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    out = f"{root}/bench"
    return {"stdout": done.stdout, "out": out, "result": json.loads(storage.read_bytes(storage.join(out, "attention.json"))),
            "summary": json.loads(storage.read_bytes(storage.join(out, "summary.json")))}


def test_benchmark_job_writes_json_plot_and_summary_to_object_storage(bench):
    result, summary = bench["result"], bench["summary"]
    assert set(result["modes"]) == set(MODES)
    assert result["config"]["window"] == 48 and result["config"]["positions"] in ("absolute", "rerotate")
    for mode in MODES:
        segments = result["modes"][mode]["segments"]
        assert [s["index"] for s in segments] == list(range(5))
        assert all(s["wall_s"] > 0 and s["kv_bytes"] > 0 and s["peak_rss_bytes"] > 0 for s in segments)
    assert [row["mode"] for row in summary["table2"]] == list(MODES)
    for name, target in summary["targets"].items():
        assert f"{'PASS' if target['ok'] else 'MISS'} {name}" in bench["stdout"]
    assert storage.read_bytes(storage.join(bench["out"], "attention.png")).startswith(b"\x89PNG")


def test_quality_columns_score_trained_models_in_every_mode_at_every_length(bench, story_models):
    quality = bench["result"]["quality"]
    assert quality["lengths"] == [2, 6] and quality["models"]["mllm"]["version"] == story_models.versions["mllm"]
    rows = bench["summary"]["table2_quality"]
    assert [(row["mode"], row["segments"]) for row in rows] == [(mode, n) for mode in MODES for n in (2, 6)]
    for row in rows:
        assert row["fid"] >= 0 and row["kid_std"] >= 0 and 0 <= row["clip_image_image"] <= 1
        assert row["stories_reaching_length"] == 2 and row["time_s"] > 0 and row["kv_mib"] > 0
    by_mode = {(row["mode"], row["segments"]): row for row in rows}
    assert all(by_mode[(mode, 6)]["time_s"] > by_mode[(mode, 2)]["time_s"] for mode in MODES)
    assert by_mode[("dense", 2)]["fid"] != by_mode[("dense", 6)]["fid"]
