"""Stage 2: story instruction tuning of the MLLM on random-length story windows.

LoRA, the new tokens' rows, norms and both resamplers train on next-token CE over the target
caption plus 1 - cos between the regressed and the ViT features of the target frame; the ViT
and the LLM's base weights stay frozen. Batches are ``WindowCollate``'s.
"""

from __future__ import annotations

from functools import cached_property

import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.pipeline import WindowCollate
from seedstory.models import freezing
from seedstory.models.export import export_mllm
from seedstory.models.lora import attach_lora
from seedstory.models.mllm import SeedStoryMLLM, build_mllm
from seedstory.models.vit import build_vit
from seedstory.tokenizer import image_token_ids
from seedstory.training.stages.base import SeedStoryStage, base_tokenizer, frozen_features, target_images


class StoryInstructModel(nn.Module):
    def __init__(self, vit: nn.Module, mllm: SeedStoryMLLM) -> None:
        super().__init__()
        self.vit = vit
        self.mllm = mllm

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = frozen_features(self.vit, batch["vit_pixels"])
        out = self.mllm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        image_features=features, is_target=target_images(batch["num_images"]))
        return {"loss": out.loss, "text_ce": out.text_loss, "image_cosine": out.image_loss}


class StoryInstruct(SeedStoryStage):
    WEIGHTS = ("vit", "llm")

    @classmethod
    def tokenizer(cls, config: SeedStoryConfig, sources: dict[str, str]) -> PreTrainedTokenizerBase:
        return base_tokenizer(config)

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerBase:
        return self.tokenizer(self.config, self.sources)

    def build(self) -> nn.Module:
        model = self.config.model
        vit = build_vit(model)
        mllm = attach_lora(build_mllm(model, image_token_ids(self._tokenizer, model.image_tokens)), model.lora)
        freezing.story_instruct(vit, mllm)
        if self.config.train.story_instruct.activation_checkpointing:
            # Non-reentrant: the frozen embeddings' outputs need no grad for the LoRA factors to get theirs.
            mllm.llm.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        return StoryInstructModel(vit, mllm)

    def collate(self) -> NumpyBatchCollateFn:
        return WindowCollate(image_token_ids(self._tokenizer, self.config.model.image_tokens).pad)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_mllm(model.mllm, self.config.model, uri, tokenizer=self._tokenizer)
        return {"mllm": uri}
