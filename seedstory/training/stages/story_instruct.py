"""Stage 2: story instruction tuning of the MLLM on random-length story windows.

Trained (inside the DeepSpeed engine): LoRA, the new tokens' rows, norms and both resamplers, on
next-token CE over the target caption plus 1 - cos between the regressed and the ViT features of the
target frame; the LLM's base weights are frozen inside it (LoRA runs through them). Frozen (outside
it): the ViT, which reads the window's frames. Batches are ``WindowCollate``'s.
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
from seedstory.training.stages.base import SeedStoryStage, base_tokenizer, target_images


class WindowImages(nn.Module):
    """A story window's frames -> their ViT features; the tokens go on as they are."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**{k: v for k, v in batch.items() if k != "vit_pixels"}, "image_features": self.vit(batch["vit_pixels"])}


class StoryInstructModel(nn.Module):
    def __init__(self, mllm: SeedStoryMLLM) -> None:
        super().__init__()
        self.mllm = mllm

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.mllm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"],
                        image_features=inputs["image_features"], is_target=target_images(inputs["num_images"]))
        return {"loss": out.loss, "text_ce": out.text_loss, "image_cosine": out.image_loss}


class StoryInstruct(SeedStoryStage):
    WEIGHTS = ("vit", "llm")

    @classmethod
    def check_inputs(cls, config: SeedStoryConfig, sources: dict[str, str]) -> None:
        super().check_inputs(config, sources)
        if config.train.story_instruct.zero_stage == 3:
            raise ValueError("train.story_instruct.zero_stage=3 is not supported: the LLM's weights load through "
                             "transformers, which cannot fill a network deepspeed.zero.Init has partitioned; "
                             "use zero_stage 2 (the paper's), which shards the adapter's optimizer state and grads")

    @classmethod
    def tokenizer(cls, config: SeedStoryConfig, sources: dict[str, str]) -> PreTrainedTokenizerBase:
        return base_tokenizer(config)

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerBase:
        return self.tokenizer(self.config, self.sources)

    def frozen(self) -> nn.Module:
        vit = build_vit(self.config.model)
        freezing.freeze(vit)
        return WindowImages(vit)

    def build(self) -> nn.Module:
        model = self.config.model
        mllm = attach_lora(build_mllm(model, image_token_ids(self._tokenizer, model.image_tokens)), model.lora)
        freezing.train_adapter(mllm)
        if self.config.train.story_instruct.activation_checkpointing:
            # Non-reentrant: the frozen embeddings' outputs need no grad for the LoRA factors to get theirs.
            mllm.llm.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        return StoryInstructModel(mllm)

    def collate(self) -> NumpyBatchCollateFn:
        return WindowCollate(image_token_ids(self._tokenizer, self.config.model.image_tokens).pad)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_mllm(model.mllm, self.config.model, uri, tokenizer=self._tokenizer)
        return {"mllm": uri}
