"""A stage as a Ray Train TorchTrainer: workers, run storage in object storage, failures, retention."""

from __future__ import annotations

from dataclasses import asdict

import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from seedstory.config import SeedStoryConfig
from seedstory.storage import arrow_filesystem_for
from seedstory.training.loop import LoopSpec, train_worker


def runs_uri(config: SeedStoryConfig) -> str:
    return config.storage.uri("runs")


def build_trainer(config: SeedStoryConfig, spec: LoopSpec, run_name: str, dataset: ray.data.Dataset) -> TorchTrainer:
    """Re-submitting with the same ``run_name`` resumes from the run's latest checkpoint (Train V2)."""
    stage = getattr(config.train, spec.stage)
    resources = {"CPU": stage.cpus_per_worker, **({"GPU": 1} if stage.use_gpu else {})}
    filesystem, path = arrow_filesystem_for(runs_uri(config))
    return TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config=asdict(spec),
        scaling_config=ScalingConfig(num_workers=stage.num_workers, use_gpu=stage.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=stage.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=stage.keep_checkpoints),
        ),
        datasets={"train": dataset},
        torch_config=TorchConfig(backend="nccl" if stage.use_gpu else "gloo"),
    )
