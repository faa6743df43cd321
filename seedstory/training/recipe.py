"""What a training stage plugs into the shared loop: its model, its batches, its export."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from seedstory.config import SeedStoryConfig


class StageRecipe(ABC):
    """One stage: built on every worker from the config and the URIs of what it starts from."""

    def __init__(self, config: SeedStoryConfig, sources: dict[str, str]) -> None:
        self.config = config
        self.sources = sources

    @abstractmethod
    def build(self) -> nn.Module:
        """The stage model, with exactly the stage's trainable parameters requiring grad.

        Its ``forward(batch)`` returns named loss terms: ``"loss"`` is the weighted total that is
        optimised, every other entry is logged as it is.
        """

    @abstractmethod
    def collate(self) -> NumpyBatchCollateFn:
        """Turns a Ray Data numpy batch into the tensors the model's ``forward`` takes."""

    @abstractmethod
    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        """Write the trained parts in their ecosystems' formats under ``uri``; name -> URI."""


def recipe_class(path: str) -> type[StageRecipe]:
    """``"package.module:Class"`` -> the class (workers import recipes by name, not by pickle)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"recipe path {path!r} is not of the form 'package.module:Class'")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, StageRecipe)):
        raise TypeError(f"{path} is not a StageRecipe")
    return cls
