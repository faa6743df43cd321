"""Stage 3: the de-tokenizer adapts to the features the trained MLLM regresses.

Starts from stage 2's MLLM and stage 1's de-tokenizer (``sources``: ``mllm``, ``detokenizer``).
The MLLM reads each story window with the target frame as the image to generate; its regressed
features condition the UNet, which (with its condition adapter) trains in full on the diffusion
noise MSE of the target frame. MLLM, ViT and VAE stay frozen; the UNet is what ZeRO-3 shards.
"""

from __future__ import annotations

from functools import cached_property

import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.data.pipeline import WindowCollate
from seedstory.models import freezing
from seedstory.models.detokenizer import Detokenizer
from seedstory.models.export import export_detokenizer, load_detokenizer, load_mllm
from seedstory.models.losses import weighted_total
from seedstory.models.mllm import SeedStoryMLLM
from seedstory.models.vit import build_vit
from seedstory.models.weights import load_tokenizer
from seedstory.tokenizer import image_token_ids
from seedstory.training.stages.base import SeedStoryStage, frozen_features, target_images


class DetokenizerAdaptModel(nn.Module):
    def __init__(self, vit: nn.Module, mllm: SeedStoryMLLM, detokenizer: Detokenizer) -> None:
        super().__init__()
        self.vit = vit
        self.mllm = mllm
        self.detokenizer = detokenizer

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = frozen_features(self.vit, batch["vit_pixels"])
        with torch.no_grad():
            regressed = self.mllm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  image_features=features, is_target=target_images(batch["num_images"])).regressed
        mse = self.detokenizer.loss(batch["sd_pixels"], regressed, time_ids=batch["add_time_ids"])
        weights = self.detokenizer.config.loss
        return {"loss": weighted_total({"diffusion_mse": mse}, weights), "diffusion_mse": mse}


class DetokenizerAdapt(SeedStoryStage):
    SOURCES = ("mllm", "detokenizer")
    WEIGHTS = ("vit",)

    @classmethod
    def tokenizer(cls, config: SeedStoryConfig, sources: dict[str, str]) -> PreTrainedTokenizerBase:
        """The MLLM export's own tokenizer: the windows must be cut with the ids the MLLM was trained on."""
        return load_tokenizer(storage.join(sources["mllm"], "tokenizer"), config.model.image_tokens)

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerBase:
        return self.tokenizer(self.config, self.sources)

    def build(self) -> nn.Module:
        vit = build_vit(self.config.model)
        mllm, _ = load_mllm(self.sources["mllm"])
        detokenizer = load_detokenizer(self.sources["detokenizer"])
        freezing.detokenizer_adapt(vit, mllm, detokenizer)
        if self.config.train.detokenizer_adapt.activation_checkpointing:
            detokenizer.unet.enable_gradient_checkpointing()
        return DetokenizerAdaptModel(vit, mllm, detokenizer)

    def collate(self) -> NumpyBatchCollateFn:
        return WindowCollate(image_token_ids(self._tokenizer, self.config.model.image_tokens).pad)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_detokenizer(model.detokenizer, uri)
        return {"detokenizer": uri}
