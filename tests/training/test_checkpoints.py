"""Checkpoints through Ray Train on 2 workers of one node, stored in the session's S3."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import ray.train
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from seedstory.config import SeedStoryConfig, load_config
from seedstory.storage import arrow_filesystem_for
from seedstory.training import checkpoints
from seedstory.training.deepspeed_engine import initialize

LATE_S = 2.0


def _restore_with_rank_1_late(loop_config: dict) -> None:
    """Without a checkpoint, write one; with one, restore it, rank 1 arriving ``LATE_S`` after rank 0, and
    write down when the restore returned."""
    config = SeedStoryConfig.model_validate(loop_config["config"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(0)
    engine = initialize(torch.nn.Linear(4, 1), config.train.story_instruct, world_size=2)
    latest = ray.train.get_checkpoint()
    if latest is None:
        checkpoints.save(engine, checkpoints.TrainState(step=3), {"loss": 0.0})
        return
    if rank == 1:
        time.sleep(LATE_S)
    state = checkpoints.restore(engine, latest)
    Path(f"{loop_config['log']}.{rank}").write_text(json.dumps({"step": state.step, "returned": time.time()}))


def test_no_rank_leaves_a_checkpoint_download_its_node_shares_before_every_rank_has_loaded(ray_cluster, tmp_path):
    """Ray downloads a checkpoint once per node and deletes the folder as its last reader leaves; a rank that
    arrived just as the first one out was deleting it found no folder, and its worker group restarted."""
    config = load_config("tiny", [f"storage.bucket={ray_cluster.bucket}", "train.story_instruct.cpus_per_worker=0.25"])
    filesystem, path = arrow_filesystem_for(config.storage.uri("runs"))
    name, log = f"late-restore-{uuid.uuid4().hex[:6]}", tmp_path / "restored"

    def fit() -> None:
        TorchTrainer(
            _restore_with_rank_1_late,
            train_loop_config={"config": config.model_dump(mode="json"), "log": str(log)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
            run_config=RunConfig(name=name, storage_path=path, storage_filesystem=filesystem,
                                 failure_config=FailureConfig(max_failures=0)),
            torch_config=TorchConfig(backend="gloo"),
        ).fit()

    fit()
    fit()  # the same name: Ray Train hands every worker the first run's checkpoint
    restored = {rank: json.loads(Path(f"{log}.{rank}").read_text()) for rank in (0, 1)}
    assert restored[0]["step"] == restored[1]["step"] == 3
    assert restored[0]["returned"] > restored[1]["returned"] - LATE_S / 2, restored  # rank 0 waited for rank 1
