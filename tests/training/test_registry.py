"""Model versions from export URIs and stage inputs resolved through the MLflow registry (real server)."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from seedstory.models.export import MANIFEST
from seedstory.stack.processes import free_port
from seedstory.storage import write_bytes
from seedstory.training.registry import register_export, resolve_source


@pytest.fixture
def client(mlflow_server) -> MlflowClient:
    return MlflowClient()


def _run(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name("registry-tests") or client.get_experiment(
        client.create_experiment("registry-tests"))
    return client.create_run(experiment.experiment_id).info.run_id


def _finished_export(uri: str) -> str:
    write_bytes(f"{uri}/{MANIFEST}", b"{}")
    return uri


def test_candidate_moves_to_the_newest_version_and_resolves_with_its_lineage(client, s3):
    name = f"registry-test-{uuid.uuid4().hex[:6]}"
    first_run, second_run = _run(client), _run(client)
    _finished_export(f"s3://{s3.bucket}/exports/a")
    _finished_export(f"s3://{s3.bucket}/exports/b")
    register_export(client, name, f"s3://{s3.bucket}/exports/a", first_run)
    second = register_export(client, name, f"s3://{s3.bucket}/exports/b", second_run, tags={"seedstory.stage": "x"})
    assert second.version == "2"
    resolved = resolve_source(client, f"models:/{name}@candidate")
    assert (resolved.uri, resolved.version, resolved.run_id) == (f"s3://{s3.bucket}/exports/b", "2", second_run)
    assert resolve_source(client, f"models:/{name}/1").uri == f"s3://{s3.bucket}/exports/a"
    for missing in (f"models:/{name}/9", f"models:/{name}@champion"):
        with pytest.raises(LookupError, match="no such registered model version"):
            resolve_source(client, missing)
    assert resolved.lineage("mllm") == {
        "lineage.mllm.reference": f"models:/{name}@candidate", "lineage.mllm.uri": f"s3://{s3.bucket}/exports/b",
        "lineage.mllm.model_version": f"{name}/2", "lineage.mllm.run_id": second_run,
    }
    assert client.get_model_version(name, "2").tags == {"seedstory.stage": "x"}


def test_plain_uris_pass_through_and_bad_references_are_named(client):
    plain = resolve_source(client, "s3://bucket/exports/run")
    assert plain.uri == "s3://bucket/exports/run" and plain.lineage("detokenizer") == {
        "lineage.detokenizer.reference": "s3://bucket/exports/run", "lineage.detokenizer.uri": "s3://bucket/exports/run"}
    with pytest.raises(ValueError, match="is not models:/<name>@<alias>"):
        resolve_source(client, "models:/only-a-name")
    with pytest.raises(LookupError, match="has the stage that registers 'never-registered' run"):
        resolve_source(client, "models:/never-registered@candidate")


def test_a_registry_that_does_not_answer_is_not_reported_as_a_missing_model(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    unreachable = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException, match="API request to .* failed"):
        resolve_source(unreachable, "models:/story-mllm@candidate")
