"""The shared training loop on 2 Ray Train workers with DeepSpeed on gloo (CPU, bf16)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import ray.data
import torch
from mlflow import MlflowClient
from safetensors.torch import load

from seedstory import storage
from seedstory.config import load_config
from seedstory.training.launcher import build_trainer
from seedstory.training.loop import LoopSpec
from tests.training.recipes import FEATURES, regression_rows

RECIPE = "tests.training.recipes:RegressionRecipe"


def _config(bucket: str, **stage):
    overrides = [f"storage.bucket={bucket}", "train.story_instruct.cpus_per_worker=0.25",
                 "train.story_instruct.micro_batch_size=8", "train.story_instruct.lr=3e-2",
                 "train.story_instruct.warmup_steps=2", "train.story_instruct.val_every=null"]
    overrides += [f"train.story_instruct.{k}={v}" for k, v in stage.items()]
    return load_config("tiny", overrides)


def _spec(config, run_name: str, sources: dict | None = None, run_id: str | None = None) -> LoopSpec:
    return LoopSpec(stage="story_instruct", recipe=RECIPE, config=config.model_dump(mode="json"),
                    export_uri=config.storage.uri("exports", run_name), sources=sources or {}, mlflow_run_id=run_id,
                    mlflow_tracking_uri=None)


def _fit(config, run_name: str, sources: dict | None = None, run_id: str | None = None, rows: int = 64,
         val: ray.data.Dataset | None = None):
    spec = _spec(config, run_name, sources, run_id)
    dataset = ray.data.from_items(regression_rows(rows))
    return build_trainer(config, spec, run_name, dataset, val).fit(), spec.export_uri


def _losses(run_id: str, name: str = "loss") -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, name)}


def _mlflow_run(name: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("loop-tests") or client.get_experiment(client.create_experiment("loop-tests"))
    return client.create_run(experiment.experiment_id, run_name=name).info.run_id


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero_stage_trains_validates_and_exports(ray_cluster, zero_stage):
    """One fixed global batch (16 rows = 8 per worker): the loss must fall clearly. 16 held-out rows,
    evaluated every 8 steps and at max_steps, 8 per worker: val/* is the mean over all 16."""
    config = _config(ray_cluster.bucket, zero_stage=zero_stage, max_steps=20, checkpoint_every=20, val_every=8)
    run_id = _mlflow_run(f"zero{zero_stage}")
    name = f"zero{zero_stage}-{uuid.uuid4().hex[:6]}"
    held_out = regression_rows(32)[16:]
    result, export_uri = _fit(config, name, run_id=run_id, rows=16, val=ray.data.from_items(held_out))
    losses = _losses(run_id)
    assert sorted(losses) == list(range(1, 21))
    assert losses[20] < 0.25 * losses[1], losses
    logged = set(MlflowClient().get_run(run_id).data.metrics)
    assert {"loss", "mse", "lr", "grad_norm", "samples_per_s", "data_wait_fraction", "val/loss", "val/mse"} <= logged
    assert result.checkpoint is not None and result.checkpoint.path.endswith("step-00000020")
    exported = load(storage.read_bytes(storage.join(export_uri, "regressor.safetensors")))
    assert set(exported) == {"0.weight", "0.bias", "2.weight", "2.bias"}

    val, mse = _losses(run_id, "val/loss"), _losses(run_id, "val/mse")
    assert sorted(val) == sorted(mse) == [8, 16, 20]
    assert val[20] < val[8], val
    body = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    body.load_state_dict(exported)
    x = torch.as_tensor(np.stack([row["x"] for row in held_out])).bfloat16().float()
    y = torch.as_tensor(np.stack([row["y"] for row in held_out]))
    with torch.no_grad():
        assert float(torch.mean((body(x).squeeze(-1) - y) ** 2)) == pytest.approx(mse[20], rel=0.05)


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


def test_validation_needs_a_val_dataset_and_an_interval(ray_cluster):
    dataset = ray.data.from_items(regression_rows(16))
    config = _config(ray_cluster.bucket, val_every=5)
    with pytest.raises(ValueError, match=r"train.story_instruct.val_every is set but no val dataset"):
        build_trainer(config, _spec(config, "no-val"), "no-val", dataset)
    config = _config(ray_cluster.bucket)
    with pytest.raises(ValueError, match=r"val_every is null"):
        build_trainer(config, _spec(config, "no-interval"), "no-interval", dataset, dataset)
