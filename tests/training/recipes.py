"""A regression recipe small enough to test the shared loop's mechanics in seconds."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from safetensors.torch import save
from torch import nn

from seedstory import storage
from seedstory.training.recipe import StageRecipe

FEATURES = 8


def regression_rows(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=FEATURES).astype(np.float32)
    x = rng.normal(size=(count, FEATURES)).astype(np.float32)
    return [{"x": row, "y": np.float32(row @ weights)} for row in x]


class Regressor(nn.Module):
    """With ``node_log``, each worker appends its node's id to that file at its first step. At its 6th
    step, with ``kill_marker``, a worker kills itself once; with ``node_loss_marker``, the workers name
    their node in the marker once and wait there for the test to remove a node."""

    def __init__(self, kill_marker: str | None, node_loss_marker: str | None = None,
                 node_log: str | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 32), nn.GELU(), nn.Linear(32, 1))
        self.frozen = nn.Linear(FEATURES, FEATURES)
        self.frozen.requires_grad_(False)
        self.kill_marker = kill_marker
        self.node_loss_marker = node_loss_marker
        self.node_log = node_log
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.node_log and self.calls == 1:
            with open(self.node_log, "a") as log:
                log.write(ray.get_runtime_context().get_node_id() + "\n")
        if self.kill_marker and self.calls == 6 and not Path(self.kill_marker).exists():
            Path(self.kill_marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if self.node_loss_marker and self.calls == 6 and not Path(self.node_loss_marker).exists():
            Path(self.node_loss_marker).write_text(ray.get_runtime_context().get_node_id())
            time.sleep(300)
        prediction = self.body(batch["x"] + 0 * self.frozen(batch["x"])).squeeze(-1)
        mse = torch.mean((prediction.float() - batch["y"].float()) ** 2)
        return {"loss": mse, "mse": mse}


class RegressionCollate(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"x": torch.as_tensor(np.stack(batch["x"])), "y": torch.as_tensor(batch["y"])}


class RegressionRecipe(StageRecipe):
    STAGE = "story_instruct"  # the settings the loop tests configure

    def build(self) -> nn.Module:
        torch.manual_seed(1234)
        return Regressor(self.sources.get("kill_marker"), self.sources.get("node_loss_marker"),
                         self.sources.get("node_log"))

    def collate(self) -> NumpyBatchCollateFn:
        return RegressionCollate()

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        state = {k: v.detach().float().contiguous() for k, v in model.body.state_dict().items()}
        target = storage.join(uri, "regressor.safetensors")
        storage.write_bytes(target, save(state))
        return {"regressor": target}


class FrameRegressor(nn.Module):
    """Predicts a stage-1 sample's mean SD pixel from its ViT pixels' channel means, from inputs noised by
    torch's generator as a diffusion step's are; with ``sample_log``, each rank appends the stream
    position and frame of every sample it trains on to ``<sample_log>.<rank>``."""

    def __init__(self, sample_log: str | None) -> None:
        super().__init__()
        self.body = nn.Linear(3, 1)
        self.sample_log = sample_log

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.sample_log and self.training:
            rank = ray.train.get_context().get_world_rank()
            with open(f"{self.sample_log}.{rank}", "a") as log:
                log.writelines(json.dumps(row) + "\n" for row in batch["sample"].tolist())
        means = batch["vit_pixels"].mean(dim=(2, 3))
        prediction = self.body(means + torch.randn_like(means)).squeeze(-1)
        mse = torch.mean((prediction.float() - batch["sd_pixels"].float().mean(dim=(1, 2, 3))) ** 2)
        return {"loss": mse, "mse": mse}


class FrameSampleCollate(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        sample = np.stack([np.asarray(batch[name], dtype=np.int64) for name in ("pass", "group", "index", "frame")], 1)
        return {"vit_pixels": torch.as_tensor(batch["vit_pixels"]).float(),
                "sd_pixels": torch.as_tensor(batch["sd_pixels"]).float(),
                "sample": torch.as_tensor(sample)}


class FrameRecipe(StageRecipe):
    STAGE = "detokenizer_pretrain"

    def build(self) -> nn.Module:
        torch.manual_seed(1234)
        return FrameRegressor(self.sources.get("sample_log"))

    def collate(self) -> NumpyBatchCollateFn:
        return FrameSampleCollate()

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        target = storage.join(uri, "frame_regressor.safetensors")
        storage.write_bytes(target, save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}))
        return {"frame_regressor": target}
