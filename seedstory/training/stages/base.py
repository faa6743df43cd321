"""What the three SEED-Story recipes share: declared inputs, the tokenizer contract, the de-tokenizer's loss."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.config.model import LossConfig
from seedstory.models.detokenizer import Detokenizer
from seedstory.models.losses import weighted_total
from seedstory.models.weights import load_tokenizer
from seedstory.training.recipe import StageRecipe


class SeedStoryStage(StageRecipe):
    """A stage declares what it starts from, so the driver can check it before any worker starts.

    ``SOURCES``: names of the exports it continues from (``train.<stage>.sources``).
    ``WEIGHTS``: ``model.<part>.weights`` it needs on storage (frozen bases, or bases an export refers to).
    """

    SOURCES: ClassVar[tuple[str, ...]] = ()
    WEIGHTS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_inputs(cls, config: SeedStoryConfig, sources: dict[str, str]) -> None:
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


def base_tokenizer(config: SeedStoryConfig) -> PreTrainedTokenizerBase:
    if config.model.llm.tokenizer is None:
        raise ValueError("model.llm.tokenizer is not set: point it at a tokenizer folder or set train.base_weights")
    return load_tokenizer(config.model.llm.tokenizer, config.model.image_tokens)


class Denoising(nn.Module):
    """What stages 1 and 3 train: condition adapter + UNet on the noise MSE of the target frames' latents.

    Inputs (from the stage's frozen networks): ``latents`` [B, C, s, s] (the VAE's, scaled),
    ``features`` [B, Nv, Dv] (the ViT's in stage 1, the MLLM's regressed ones in stage 3), ``time_ids`` [B, 6].
    """

    def __init__(self, detokenizer: Detokenizer, loss_weights: LossConfig) -> None:
        super().__init__()
        self.detokenizer = detokenizer
        self.loss_weights = loss_weights

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mse = self.detokenizer.denoising_loss(inputs["latents"], inputs["features"], time_ids=inputs["time_ids"])
        return {"loss": weighted_total({"diffusion_mse": mse}, self.loss_weights), "diffusion_mse": mse}


def target_images(num_images: torch.Tensor) -> torch.Tensor:
    """[sum(num_images)] bool: each window's last image, the one to generate (``WindowCollate`` order)."""
    ends = torch.cumsum(num_images, dim=0) - 1
    mask = torch.zeros(int(num_images.sum()), dtype=torch.bool, device=num_images.device)
    mask[ends] = True
    return mask
