"""Stage 2, story instruction tuning: the LoRA MLLM learns to continue stories, text and image features.

    ray job submit --working-dir . -- python jobs/story_instruct.py --config tiny [KEY=VALUE ...]

Trained (inside the DeepSpeed engine, ZeRO-2): LoRA, the new tokens' rows, the norms and both
resamplers, on next-token CE over the target caption plus 1 - cos between the regressed and the ViT
features of the target frame; the LLM's base weights stay frozen inside it (LoRA runs through
them). Frozen (outside it): the ViT, which reads the window's frames. Data: random story windows
(new ones each pass, shuffled) cut with the base tokenizer (+ the val split, evaluated every
`val_every` steps). Export: the peft adapter, the resamplers and the tokenizer -> model version
`train.story_instruct.registered_model`@candidate.
Re-submit with the same `train.run_name=NAME` to resume from its latest checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.config import SeedStoryConfig
from seedstory.data.streams import stage_stream
from seedstory.data.stage_collate import WindowCollate, target_images
from seedstory.models import freezing
from seedstory.models.export import export_mllm
from seedstory.models.lora import attach_lora
from seedstory.models.mllm import SeedStoryMLLM, build_mllm
from seedstory.models.vit import build_vit
from seedstory.models.weights import load_tokenizer
from seedstory.tokenizer import image_token_ids
from seedstory.training.recipe import StageRecipe
from seedstory.training.run import start_stage


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
        out = self.mllm(input_ids=inputs["input_ids"], labels=inputs["labels"], image_features=inputs["image_features"],
                        is_target=target_images(inputs["num_images"]))
        return {"loss": out.loss, "text_ce": out.text_loss, "image_cosine": out.image_loss}


class StoryInstruct(StageRecipe):
    STAGE = "story_instruct"
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
        """The base LLM's tokenizer, extended with the image tokens."""
        if config.model.llm.tokenizer is None:
            raise ValueError("model.llm.tokenizer is not set: point it at a tokenizer folder or set train.base_weights")
        return load_tokenizer(config.model.llm.tokenizer, config.model.image_tokens)

    def frozen(self) -> nn.Module:
        vit = build_vit(self.config.model)
        freezing.freeze(vit)
        return WindowImages(vit)

    def build(self) -> nn.Module:
        model = self.config.model
        mllm = attach_lora(build_mllm(model, image_token_ids(self.text_tokenizer, model.image_tokens)), model.lora)
        freezing.train_adapter(mllm)
        if self.config.train.story_instruct.activation_checkpointing:
            # Non-reentrant: the frozen embeddings' outputs need no grad for the LoRA factors to get theirs.
            mllm.llm.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        return StoryInstructModel(mllm)

    def collate(self) -> NumpyBatchCollateFn:
        return WindowCollate(image_token_ids(self.text_tokenizer, self.config.model.image_tokens).pad)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_mllm(model.mllm, self.config.model, uri, tokenizer=self.text_tokenizer)
        return {"mllm": uri}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return parser


def main() -> None:
    config = config_from_args(arguments().parse_args())

    with start_stage(StoryInstruct, config) as run:
        tokenizer = run.tokenizer()
        windows, report = stage_stream(run.stage, run.config, tokenizer)
        run.fit(windows, run.validation_set(tokenizer))
        run.log_data(report)
        run.register()
    print(run.where_to_look())


if __name__ == "__main__":
    main()
