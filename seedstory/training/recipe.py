"""What a training stage plugs into the shared loop: what it trains, the frozen networks that feed it, its
batches, its export."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from seedstory.config import SeedStoryConfig

if TYPE_CHECKING:  # a type only: the recipes' models build where Ray is not installed (jobs/bench_zero_init.py)
    from ray.data.collate_fn import NumpyBatchCollateFn


class StageRecipe(ABC):
    """One stage: built on every worker from the config and the URIs of what it starts from."""

    def __init__(self, config: SeedStoryConfig, sources: dict[str, str]) -> None:
        self.config = config
        self.sources = sources

    @abstractmethod
    def build(self) -> nn.Module:
        """What the stage trains, the module the DeepSpeed engine wraps, with exactly its trainable parameters
        requiring grad.

        Its ``forward(inputs)`` returns named loss terms: ``"loss"`` is the weighted total that is
        optimised, every other entry is logged as it is. Under ZeRO-3 the loop calls it inside
        ``deepspeed.zero.Init``: parameters are partitioned as each submodule is made, so weights go in
        through ``seedstory.models.partitioned``.
        """

    def frozen(self) -> nn.Module | None:
        """The frozen networks that turn a batch into ``build``'s inputs (``forward(batch) -> inputs``), or None
        when the batch goes in as it is.

        They run outside the engine, in the compute dtype and without gradients: DeepSpeed neither
        partitions, gathers, nor keeps optimizer state for them.
        """
        return None

    @abstractmethod
    def collate(self) -> NumpyBatchCollateFn:
        """Turns a Ray Data numpy batch into the tensors the model's ``forward`` takes."""

    @abstractmethod
    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        """Write the trained parts in their ecosystems' formats under ``uri``; name -> URI."""


def feed(frozen: nn.Module | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained network's inputs: ``batch`` through the stage's frozen networks, without a graph."""
    if frozen is None:
        return batch
    with torch.no_grad():
        return frozen(batch)


def recipe_class(path: str) -> type[StageRecipe]:
    """``"package.module:Class"`` -> the class (workers import recipes by name, not by pickle)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"recipe path {path!r} is not of the form 'package.module:Class'")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, StageRecipe)):
        raise TypeError(f"{path} is not a StageRecipe")
    return cls
