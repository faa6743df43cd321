"""The shared training loop on 2 Ray Train workers with DeepSpeed on gloo (CPU, bf16)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray.data
import torch
from mlflow import MlflowClient
from safetensors.torch import load

from seedstory import storage
from seedstory.config import load_config
from seedstory.data.streams import EpochStream, TrainStream, stage_stream
from seedstory.data.toyworld.generate import write_toy_world
from seedstory.training.launcher import build_trainer
from seedstory.training.loop import LoopSpec
from seedstory.training.recipe import StageRecipe
from tests.training.recipes import FEATURES, FrameRecipe, RegressionRecipe, regression_rows


def _config(bucket: str, **stage):
    overrides = [f"storage.bucket={bucket}", "train.story_instruct.cpus_per_worker=0.25",
                 "train.story_instruct.micro_batch_size=8", "train.story_instruct.lr=3e-2",
                 "train.story_instruct.warmup_steps=2", "train.story_instruct.val_every=null"]
    overrides += [f"train.story_instruct.{k}={v}" for k, v in stage.items()]
    return load_config("tiny", overrides)


def _spec(config, run_name: str, stream: TrainStream, sources: dict | None = None, run_id: str | None = None,
          recipe: type[StageRecipe] = RegressionRecipe) -> LoopSpec:
    return LoopSpec(recipe=recipe, config=config.model_dump(mode="json"),
                    export_uri=config.storage.uri("exports", run_name), stream=stream, sources=sources or {},
                    mlflow_run_id=run_id, mlflow_tracking_uri=None)


def _rows(config, rows: int = 64) -> EpochStream:
    return EpochStream(ray.data.from_items(regression_rows(rows)).materialize(), config.data.seed,
                       config.data.shuffle_buffer)


def _fit(config, run_name: str, sources: dict | None = None, run_id: str | None = None, rows: int = 64,
         val: ray.data.Dataset | None = None):
    spec = _spec(config, run_name, _rows(config, rows), sources, run_id)
    return build_trainer(config, spec, run_name, val).fit(), spec.export_uri


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


def _frame_world(bucket: str, **stage):
    """A 6-story toy world dealt to 2 workers in groups of 2 stories, 4 frames a micro-batch. No restarts: a
    restarted worker group logs the samples it trains on again, and would fail the test without its cause."""
    toy = f"s3://{bucket}/toy-resume-{uuid.uuid4().hex[:6]}"
    overrides = [f"storage.bucket={bucket}", "data.toy.stories=6", "data.toy.min_frames=6", "data.toy.max_frames=10",
                 "data.toy.val_fraction=0.0", "data.toy.test_fraction=0.0", f"data.toy.uri={toy}",
                 f"data.train_jsonl=[{toy}/train.jsonl]", f"data.image_root={toy}/images",
                 "data.preprocess_batch_size=2"]
    overrides += [f"train.detokenizer_pretrain.{k}={v}" for k, v in {
        "cpus_per_worker": 0.25, "micro_batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "val_every": "null",
        "zero_stage": 2, "max_failures": 0, **stage}.items()]
    config = load_config("tiny", overrides)
    write_toy_world(config.data.toy)
    return config


def _fit_frames(config, run_name: str, sample_log: Path, run_id: str):
    stream, _ = stage_stream("detokenizer_pretrain", config)
    spec = _spec(config, run_name, stream, {"sample_log": str(sample_log)}, run_id, FrameRecipe)
    return build_trainer(config, spec, run_name).fit()


def _samples(log: Path) -> dict[int, list]:
    """Per rank, the (pass, group, index, frame) of every sample trained on, in order."""
    return {rank: [json.loads(line) for line in Path(f"{log}.{rank}").read_text().splitlines()] for rank in (0, 1)}


def test_a_run_resumed_mid_pass_trains_on_exactly_the_samples_the_whole_run_did(ray_cluster, tmp_path):
    """Stopped after step 5 of 10 (mid-pass, mid-group) and resubmitted under the same name: steps 6-10 read
    the same samples in the same order on each rank as an uninterrupted run, and their losses, which the
    noise each step draws enters, match."""
    config = _frame_world(ray_cluster.bucket, max_steps=10, checkpoint_every=10)
    whole = _mlflow_run("frames-whole")
    _fit_frames(config, f"frames-whole-{uuid.uuid4().hex[:6]}", tmp_path / "whole", whole)
    name, first, second = f"frames-resumed-{uuid.uuid4().hex[:6]}", _mlflow_run("frames-first"), _mlflow_run("second")
    stopped = config.model_copy(deep=True)
    stopped.train.detokenizer_pretrain.stop_at_step = 5
    _fit_frames(stopped, name, tmp_path / "first", first)
    _fit_frames(config, name, tmp_path / "second", second)

    reference, before, after = _samples(tmp_path / "whole"), _samples(tmp_path / "first"), _samples(tmp_path / "second")
    for rank in (0, 1):
        assert len(reference[rank]) == 10 * 4 and before[rank] == reference[rank][:20]
        assert after[rank] == reference[rank][20:], rank
    resumed_at = [after[rank][0] for rank in (0, 1)]
    assert any(index > 0 for _, _, index, _ in resumed_at), resumed_at  # inside a group, not at its start
    assert any(after[rank][0][0] == before[rank][-1][0] for rank in (0, 1)), resumed_at  # inside a pass
    assert any(len({row[0] for row in reference[rank]}) > 1 for rank in (0, 1))  # the stream runs into pass 1
    losses, resumed = _losses(whole), _losses(second)
    assert sorted(resumed) == list(range(6, 11))
    for step in resumed:
        assert resumed[step] == pytest.approx(losses[step], abs=1e-4), (step, resumed, losses)


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
        build_trainer(config, _spec(config, "no-val", _rows(config, 16)), "no-val")
    config = _config(ray_cluster.bucket)
    with pytest.raises(ValueError, match=r"val_every is null"):
        build_trainer(config, _spec(config, "no-interval", _rows(config, 16)), "no-interval", dataset)
