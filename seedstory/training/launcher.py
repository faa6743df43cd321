"""A stage as a Ray Train TorchTrainer: workers, datasets, run storage in object storage, failures, retention.

Training data travels in the loop's spec as a stream each worker reads its own share of
(``seedstory.data.streams``), so that a resumed run continues exactly where it stopped. The "val"
dataset goes through Ray Train unsplit: every worker reads all of it and evaluates its own share
(``seedstory.training.loop.validate``), which keeps the val samples and their order the same at
every evaluation.
"""

from __future__ import annotations

import ray
import ray.data
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from seedstory.config import SeedStoryConfig
from seedstory.storage import arrow_filesystem_for
from seedstory.training.loop import LoopSpec, train_worker


def runs_uri(config: SeedStoryConfig) -> str:
    return config.storage.uri("runs")


def build_trainer(config: SeedStoryConfig, spec: LoopSpec, run_name: str,
                  val: ray.data.Dataset | None = None) -> TorchTrainer:
    """Re-submitting with the same ``run_name`` resumes from the run's latest checkpoint (Train V2).

    ``val`` is required when ``train.<stage>.val_every`` is set, and refused when it is not.
    """
    stage = getattr(config.train, spec.stage)
    if stage.val_every is not None and val is None:
        raise ValueError(f"train.{spec.stage}.val_every is set but no val dataset was given "
                         "(seedstory.data.pipeline.validation_set); set it to null to train without validation")
    if stage.val_every is None and val is not None:
        raise ValueError(f"a val dataset was given but train.{spec.stage}.val_every is null: set an interval")
    resources = {"CPU": stage.cpus_per_worker, **({"GPU": 1} if stage.use_gpu else {})}
    filesystem, path = arrow_filesystem_for(runs_uri(config))
    return TorchTrainer(
        train_loop_per_worker=train_worker,
        # Ray Train's controller unpickles train_loop_config. As an object ref the spec reaches only the
        # workers, and the controller, which every worker waits for, starts without importing torch,
        # DeepSpeed and the models.
        train_loop_config={"spec": ray.put(spec)},
        scaling_config=ScalingConfig(num_workers=stage.num_workers, use_gpu=stage.use_gpu,
                                     resources_per_worker=resources, placement_strategy=stage.placement_strategy),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=stage.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=stage.keep_checkpoints),
        ),
        datasets={"val": val} if val is not None else None,
        dataset_config=DataConfig(datasets_to_split=[]),
        torch_config=TorchConfig(backend="nccl" if stage.use_gpu else "gloo"),
    )
