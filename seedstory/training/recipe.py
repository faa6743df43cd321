"""What a training stage plugs into the shared loop: what it starts from, what it trains, the frozen networks
that feed it, its batches, its export.

A stage's recipe lives with its job (``jobs/<stage>.py``); the tiny preset's base pretraining keeps
its recipes in ``seedstory.training.base_recipes``. The recipe class itself travels to the workers
in the loop's spec: a job's own classes are pickled by value, installed ones by reference. A class
pickled by value cannot hold a ``functools.cached_property`` (on Python 3.11 its lock does not
pickle): recipes load what they share between methods in ``__init__``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig

if TYPE_CHECKING:  # a type only: the recipes' models build where Ray is not installed (jobs/bench_zero_init.py)
    from ray.data.collate_fn import NumpyBatchCollateFn


class StageRecipe(ABC):
    """One stage: built on every worker from the config and the URIs of what it starts from.

    ``STAGE``: the stage's name, its settings are ``train.<STAGE>``.
    ``SOURCES``: names of the exports it continues from (``train.<STAGE>.sources``).
    ``WEIGHTS``: ``model.<part>.weights`` it needs on storage (frozen bases, or bases an export refers to).
    """

    STAGE: ClassVar[str]
    SOURCES: ClassVar[tuple[str, ...]] = ()
    WEIGHTS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: SeedStoryConfig, sources: dict[str, str]) -> None:
        self.config = config
        self.sources = sources
        self.text_tokenizer = self.tokenizer(config, sources)  # what the stage's text is cut with; None without text

    @classmethod
    def check_inputs(cls, config: SeedStoryConfig, sources: dict[str, str]) -> None:
        """Called on the driver before any worker starts: what is missing is named there, not in a worker's log."""
        missing = [name for name in cls.SOURCES if name not in sources]
        unknown = sorted(set(sources) - set(cls.SOURCES))
        if missing or unknown:
            raise ValueError(f"{cls.__name__} starts from sources {list(cls.SOURCES)}; "
                             f"missing {missing}, not understood {unknown}")
        unset = [part for part in cls.WEIGHTS if getattr(config.model, part).weights is None]
        if unset:
            raise ValueError(f"{cls.__name__} needs " + ", ".join(f"model.{p}.weights" for p in unset)
                             + " on storage: set them or train.base_weights (jobs/pretrain_bases.py)")

    @classmethod
    def tokenizer(cls, config: SeedStoryConfig, sources: dict[str, str]) -> PreTrainedTokenizerBase | None:
        """The tokenizer the stage's samples are cut with (None: the stage has no text)."""
        return None

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
