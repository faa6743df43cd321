import uuid

import mlflow
from mlflow import MlflowClient

from seedstory import storage
from seedstory.config import load_config
from seedstory.tracking import flatten, tracked_run


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "null"}


def test_run_params_metrics_artifact_round_trip(mlflow_server, tmp_path):
    config = load_config("tiny", [f"tracking.experiment=test-{uuid.uuid4().hex[:6]}"])
    artifact = tmp_path / "note.txt"
    artifact.write_text("an artifact")
    with tracked_run(config.tracking, stage="unit", run_name="roundtrip", params=config) as run:
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_artifact(str(artifact), artifact_path="notes")
    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params["train.story_instruct.lr"] == str(config.train.story_instruct.lr)
    assert data.params["model.preset"] == "tiny"
    assert data.tags["seedstory.stage"] == "unit"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 0.25]
    local = client.download_artifacts(run.info.run_id, "notes/note.txt", str(tmp_path / "back"))
    assert open(local).read() == "an artifact"
    fs, root = storage.filesystem_for(f"s3://{mlflow_server.bucket}/mlflow")
    landed = [p for p in fs.find(root) if p.endswith(f"{run.info.run_id}/artifacts/notes/note.txt")]
    assert len(landed) == 1
