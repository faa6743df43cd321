"""The shared training loop on 2 Ray Train workers with DeepSpeed on gloo (CPU, bf16)."""

from __future__ import annotations

import uuid

import pytest
import ray.data
from mlflow import MlflowClient
from safetensors.torch import load

from seedstory import storage
from seedstory.config import load_config
from seedstory.training.launcher import build_trainer
from seedstory.training.loop import LoopSpec
from tests.training.recipes import regression_rows

RECIPE = "tests.training.recipes:RegressionRecipe"


def _config(bucket: str, **stage):
    overrides = [f"storage.bucket={bucket}", "train.story_instruct.cpus_per_worker=0.25",
                 "train.story_instruct.micro_batch_size=8", "train.story_instruct.lr=3e-2",
                 "train.story_instruct.warmup_steps=2"]
    overrides += [f"train.story_instruct.{k}={v}" for k, v in stage.items()]
    return load_config("tiny", overrides)


def _fit(config, run_name: str, sources: dict | None = None, run_id: str | None = None, rows: int = 64):
    export_uri = config.storage.uri("exports", run_name)
    spec = LoopSpec(stage="story_instruct", recipe=RECIPE, config=config.model_dump(mode="json"),
                    export_uri=export_uri, sources=sources or {}, mlflow_run_id=run_id,
                    mlflow_tracking_uri=None)
    dataset = ray.data.from_items(regression_rows(rows))
    return build_trainer(config, spec, run_name, dataset).fit(), export_uri


def _losses(run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "loss")}


def _mlflow_run(name: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("loop-tests") or client.get_experiment(client.create_experiment("loop-tests"))
    return client.create_run(experiment.experiment_id, run_name=name).info.run_id


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero_stage_trains_and_exports(ray_cluster, zero_stage):
    """One fixed global batch (16 rows = 8 per worker): the loss must fall clearly."""
    config = _config(ray_cluster.bucket, zero_stage=zero_stage, max_steps=20, checkpoint_every=20)
    run_id = _mlflow_run(f"zero{zero_stage}")
    name = f"zero{zero_stage}-{uuid.uuid4().hex[:6]}"
    result, export_uri = _fit(config, name, run_id=run_id, rows=16)
    losses = _losses(run_id)
    assert sorted(losses) == list(range(1, 21))
    assert losses[20] < 0.25 * losses[1], losses
    logged = set(MlflowClient().get_run(run_id).data.metrics)
    assert {"loss", "mse", "lr", "grad_norm", "samples_per_s", "data_wait_fraction"} <= logged
    assert result.checkpoint is not None and result.checkpoint.path.endswith("step-00000020")
    exported = load(storage.read_bytes(storage.join(export_uri, "regressor.safetensors")))
    assert set(exported) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_resubmitting_the_same_run_resumes_exactly(ray_cluster):
    base = dict(zero_stage=2, max_steps=12, checkpoint_every=4)
    whole = _mlflow_run("whole")
    _fit(_config(ray_cluster.bucket, **base), f"whole-{uuid.uuid4().hex[:6]}", run_id=whole)
    name = f"resumed-{uuid.uuid4().hex[:6]}"
    first, second = _mlflow_run("first"), _mlflow_run("second")
    _fit(_config(ray_cluster.bucket, **base, stop_at_step=8), name, run_id=first)
    assert sorted(_losses(first)) == list(range(1, 9))
    _fit(_config(ray_cluster.bucket, **base), name, run_id=second)
    resumed, reference = _losses(second), _losses(whole)
    assert sorted(resumed) == [9, 10, 11, 12]
    for step in resumed:
        assert resumed[step] == pytest.approx(reference[step], rel=0.02), (step, resumed, reference)


def test_a_killed_worker_is_replaced_and_the_run_finishes(ray_cluster, tmp_path):
    config = _config(ray_cluster.bucket, zero_stage=2, max_steps=10, checkpoint_every=2, max_failures=2)
    run_id = _mlflow_run("killed")
    marker = tmp_path / "killed-once"
    result, export_uri = _fit(config, f"killed-{uuid.uuid4().hex[:6]}", sources={"kill_marker": str(marker)},
                              run_id=run_id)
    assert marker.exists(), "the worker was never killed"
    assert result.error is None
    assert result.checkpoint.path.endswith("step-00000010")
    assert max(_losses(run_id)) and 10 in _losses(run_id)
    assert storage.read_bytes(storage.join(export_uri, "regressor.safetensors"))
