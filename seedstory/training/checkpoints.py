"""DeepSpeed checkpoints through Ray Train: every rank writes its shards, Ray merges and stores them.

The loop's own position (the step, where every rank's training stream goes on, and every rank's
random state) rides in DeepSpeed's ``client_state``, so model, optimizer, scheduler, data position
and the draws still to come (diffusion noise and timesteps, condition dropout) come back together.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from deepspeed import DeepSpeedEngine

TAG = "deepspeed"


@dataclass
class TrainState:
    step: int = 0
    positions: list[dict[str, int]] = field(default_factory=list)
    """Per rank, the position its stream continues from (``seedstory.data.streams.TrainStream``)."""
    random_states: list[dict[str, Any]] = field(default_factory=list)
    """Per rank, torch's random state after the step (``random_state``)."""

    def position(self, rank: int, world: int) -> dict[str, int]:
        if not self.positions:
            return {}
        self._check_world(world)
        return self.positions[rank]

    def restore_random_state(self, rank: int, world: int, device: torch.device) -> None:
        """Go on drawing where rank ``rank`` of the checkpointed run stopped (a fresh run keeps its seed)."""
        if not self.random_states:
            return
        self._check_world(world)
        saved = self.random_states[rank]
        torch.set_rng_state(saved["cpu"])
        if saved.get("accelerator") is not None and device.type != "cpu":
            torch.get_device_module(device).set_rng_state(saved["accelerator"], device)

    def _check_world(self, world: int) -> None:
        if len(self.positions) != world:
            raise RuntimeError(f"the checkpoint was written by {len(self.positions)} workers: resuming with {world} "
                               f"would not continue their streams; set num_workers back to {len(self.positions)}")


def random_state(device: torch.device) -> dict[str, Any]:
    """This process's torch random state: the CPU generator, and the accelerator's when training on one."""
    accelerator = torch.get_device_module(device).get_rng_state(device) if device.type != "cpu" else None
    return {"cpu": torch.get_rng_state(), "accelerator": accelerator}


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
    """Collective: every rank must call it. Ray downloads a checkpoint once per node, to one folder for every
    rank there, and deletes the folder when the last rank using it leaves ``as_directory``; a rank that left
    before another arrived would delete it under that one's load, so none leaves until every rank has loaded."""
    with checkpoint.as_directory() as folder:
        path, client_state = engine.load_checkpoint(folder, tag=TAG)
        dist.barrier()
    if path is None or not client_state or "train_state" not in client_state:
        raise RuntimeError(f"checkpoint {checkpoint.path} holds no DeepSpeed state tagged {TAG!r}")
    return TrainState(**client_state["train_state"])
