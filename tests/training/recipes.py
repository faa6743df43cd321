"""A regression recipe small enough to test the shared loop's mechanics in seconds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
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
    def __init__(self, kill_marker: str | None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 32), nn.GELU(), nn.Linear(32, 1))
        self.frozen = nn.Linear(FEATURES, FEATURES)
        self.frozen.requires_grad_(False)
        self.kill_marker = kill_marker
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.kill_marker and self.calls == 6 and not Path(self.kill_marker).exists():
            Path(self.kill_marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        prediction = self.body(batch["x"] + 0 * self.frozen(batch["x"])).squeeze(-1)
        mse = torch.mean((prediction.float() - batch["y"].float()) ** 2)
        return {"loss": mse, "mse": mse}


class RegressionCollate(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"x": torch.as_tensor(np.stack(batch["x"])), "y": torch.as_tensor(batch["y"])}


class RegressionRecipe(StageRecipe):
    def build(self) -> nn.Module:
        torch.manual_seed(1234)
        return Regressor(self.sources.get("kill_marker"))

    def collate(self) -> NumpyBatchCollateFn:
        return RegressionCollate()

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        state = {k: v.detach().float().contiguous() for k, v in model.body.state_dict().items()}
        target = storage.join(uri, "regressor.safetensors")
        storage.write_bytes(target, save(state))
        return {"regressor": target}
