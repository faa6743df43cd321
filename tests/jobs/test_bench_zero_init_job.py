"""jobs/bench_zero_init.py on the CPU at the tiny shapes: one process, gloo, no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from seedstory.stack import free_port
from tests.conftest import REPO_ROOT


def test_the_benchmark_builds_partitioned_trains_and_writes_its_figures(tmp_path):
    done = subprocess.run(
        [sys.executable, "jobs/bench_zero_init.py", "--config", "tiny", "--device", "cpu", "--steps", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env={**os.environ, "MASTER_PORT": str(free_port())},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "zero_init.json").read_text())
    assert report["partitioned"] and report["preset"] == "tiny" and len(report["step_s"]) == 2
    assert all(loss > 0 for loss in report["losses"]) and report["train_peak_bytes"] >= report["build_peak_bytes"] > 0
    assert 0 < report["estimated_model_state_bytes"] and report["trainable"] > 0
