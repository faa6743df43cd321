"""jobs/prepare_data.py through `ray job submit`: the prepared dataset in object storage, its MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from mlflow import MlflowClient

from seedstory import storage
from seedstory.config import load_config
from seedstory.data.story_sets import PREPARED_MANIFEST
from seedstory.data.toyworld.generate import write_toy_world
from tests.conftest import REPO_ROOT

from .test_bench_attention_job import RAY

pytestmark = pytest.mark.stack


def test_the_job_prepares_the_dataset_its_config_trains_on_and_records_it_in_mlflow(ray_head):
    """Without --out, the job writes the config's own data.prepared from the released form it names."""
    root = f"s3://{ray_head.bucket}/prepare-job-{uuid.uuid4().hex[:6]}"
    toy = load_config("tiny", ["data.toy.stories=6", "data.toy.min_frames=3", "data.toy.max_frames=4",
                               "data.toy.val_fraction=0.3", "data.toy.test_fraction=0.0"]).data.toy
    world = write_toy_world(toy, f"{root}/toy")
    train, val = world["splits"]["train"], world["splits"]["val"]
    assert train >= 3 and val >= 1
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT), "--",
         "python", "jobs/prepare_data.py", "--config", "tiny", "--splits", "train,val", "--stories-per-shard", "2",
         f"data.prepared={root}/prepared", f"data.train_jsonl=[{world['jsonl']['train']}]",
         f"data.val_jsonl=[{world['jsonl']['val']}]", f"data.image_root={world['image_root']}"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    manifest = json.loads(storage.read_bytes(f"{root}/prepared/{PREPARED_MANIFEST}"))
    assert manifest["data"]["train"]["stories"] == train and manifest["data"]["val"]["stories"] == val
    assert [shard["file"] for shard in manifest["splits"]["train"]] == [
        f"train/part-{shard:05d}.parquet" for shard in range((train + 1) // 2)]
    assert f"train on it:   data.prepared={root}/prepared" in done.stdout
    run_id = done.stdout.split("/runs/")[-1].split()[0]
    run = MlflowClient(ray_head.mlflow_url).get_run(run_id)
    assert run.data.metrics["data_train/stories"] == train and run.data.tags["seedstory.prepared_uri"] == f"{root}/prepared"


def test_splits_it_does_not_know_and_a_missing_destination_are_refused_before_anything_runs():
    done = subprocess.run([sys.executable, "jobs/prepare_data.py", "--out", "/tmp/nowhere", "--splits", "train,dev"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode != 0 and "--splits takes train, val, test (got 'train,dev')" in done.stderr
    done = subprocess.run([sys.executable, "jobs/prepare_data.py", "--config", "tiny"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode != 0
    assert "--out is required when the config names no prepared dataset (data.prepared)" in done.stderr
