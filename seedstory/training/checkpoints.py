"""DeepSpeed checkpoints through Ray Train: every rank writes its shards, Ray merges and stores them.

The loop's own position (the step, and where every rank's training stream goes on) rides in
DeepSpeed's ``client_state``, so model, optimizer, scheduler and data position come back together.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field

import ray.train
from deepspeed import DeepSpeedEngine

TAG = "deepspeed"


@dataclass
class TrainState:
    step: int = 0
    positions: list[dict[str, int]] = field(default_factory=list)
    """Per rank, the position its stream continues from (``seedstory.data.streams.TrainStream``)."""

    def position(self, rank: int, world: int) -> dict[str, int]:
        if not self.positions:
            return {}
        if len(self.positions) != world:
            raise RuntimeError(f"the checkpoint was written by {len(self.positions)} workers: resuming with {world} "
                               f"would not continue their streams; set num_workers back to {len(self.positions)}")
        return self.positions[rank]


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
