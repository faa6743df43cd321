"""DeepSpeed checkpoints through Ray Train: every rank writes its shards, Ray merges and stores them.

The loop's own position (step, epoch, batches consumed in the epoch) rides in DeepSpeed's
``client_state``, so model, optimizer, scheduler and data position come back together.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass

import ray.train
from deepspeed import DeepSpeedEngine

TAG = "deepspeed"


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def save(engine: DeepSpeedEngine, state: TrainState, metrics: dict[str, float]) -> None:
    """Collective: every rank must call it at the same step."""
    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag=TAG, client_state={"train_state": asdict(state)})
        ray.train.report(
            {**metrics, "step": state.step},
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"step-{state.step:08d}",
        )


def restore(engine: DeepSpeedEngine, checkpoint: ray.train.Checkpoint) -> TrainState:
    with checkpoint.as_directory() as folder:
        path, client_state = engine.load_checkpoint(folder, tag=TAG)
    if path is None or not client_state or "train_state" not in client_state:
        raise RuntimeError(f"checkpoint {checkpoint.path} holds no DeepSpeed state tagged {TAG!r}")
    return TrainState(**client_state["train_state"])
