"""jobs/generate_toyworld.py: the world and its text corpus written, read back, and recorded in MLflow."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from mlflow import MlflowClient

from seedstory import storage
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack


def test_the_job_writes_the_world_and_its_text_corpus_and_records_both(mlflow_server):
    uri = f"s3://{mlflow_server.bucket}/toyworld-job-{uuid.uuid4().hex[:6]}"
    experiment = f"toyworld-job-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        [sys.executable, "jobs/generate_toyworld.py", "--config", "tiny", f"data.toy.uri={uri}",
         "data.toy.stories=5", "data.toy.min_frames=3", "data.toy.max_frames=4", "data.toy.text_stories=4",
         f"tracking.experiment={experiment}", f"storage.bucket={mlflow_server.bucket}"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert f"text corpus: 4 stories, {uri}/text.jsonl" in done.stdout
    assert len(storage.read_bytes(f"{uri}/text.jsonl").decode().splitlines()) == 4
    client = MlflowClient()
    run, = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.data.tags["seedstory.stage"] == "toyworld" and run.data.metrics["data/text_stories"] == 4
