"""Stage 3, de-tokenizer adaptation: the SD-XL UNet learns to paint from the MLLM's regressed features.

    ray job submit --working-dir . -- python jobs/detokenizer_adapt.py --config tiny [KEY=VALUE ...]

Starts from `train.detokenizer_adapt.sources`: `mllm` (stage 2) and `detokenizer` (stage 1), each an
MLflow model reference (default models:/seedstory-mllm@candidate, models:/seedstory-detokenizer@candidate)
or an export URI; the versions and runs they resolve to are recorded on the run (lineage).
Trained (inside the DeepSpeed engine, ZeRO-3 partitions it, built under `deepspeed.zero.Init`):
stage 1's condition adapter + UNet, in full, on the diffusion noise MSE of each window's target
frame. Frozen (outside it, never gathered): the ViT, which reads the window's frames; the MLLM, its
LoRA merged as stories run it, which reads the window with the target frame as the image to generate
and regresses its features (the condition); the VAE, which encodes the target. Data: story windows
(new ones each pass, shuffled) cut with the MLLM's own tokenizer (+ the val split, evaluated every
`val_every` steps).
Export: the diffusers UNet + the adapter -> model version
`train.detokenizer_adapt.registered_model`@candidate.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory import storage
from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.config import SeedStoryConfig
from seedstory.config.model import ModelConfig
from seedstory.data.streams import stage_stream
from seedstory.data.stage_collate import WindowCollate, target_images
from seedstory.models import freezing
from seedstory.models.detokenizer import build_vae, encode_frames
from seedstory.models.export import export_detokenizer, export_model_config, load_mllm, load_mllm_vit
from seedstory.models.lora import merge_lora
from seedstory.models.mllm import SeedStoryMLLM
from seedstory.models.partitioned import load_trained_detokenizer
from seedstory.models.weights import load_tokenizer
from seedstory.tokenizer import image_token_ids
from seedstory.training.denoising import Denoising
from seedstory.training.recipe import StageRecipe
from seedstory.training.run import start_stage


class WindowConditioning(nn.Module):
    """A story window -> the MLLM's regressed features for its target frame, and that frame's VAE latents."""

    def __init__(self, vit: nn.Module, mllm: SeedStoryMLLM, vae: AutoencoderKL, config: ModelConfig) -> None:
        super().__init__()
        self.vit = vit
        self.mllm = mllm
        self.vae = vae
        self.config = config

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.vit(batch["vit_pixels"])
        regressed = self.mllm(input_ids=batch["input_ids"], image_features=features,
                              is_target=target_images(batch["num_images"])).regressed
        return {"latents": encode_frames(self.vae, self.config, batch["sd_pixels"]), "features": regressed,
                "time_ids": batch["add_time_ids"]}


class DetokenizerAdapt(StageRecipe):
    STAGE = "detokenizer_adapt"
    SOURCES = ("mllm", "detokenizer")

    @classmethod
    def tokenizer(cls, config: SeedStoryConfig, sources: dict[str, str]) -> PreTrainedTokenizerBase:
        """The MLLM export's own tokenizer: the windows must be cut with the ids the MLLM was trained on."""
        return load_tokenizer(storage.join(sources["mllm"], "tokenizer"), config.model.image_tokens)

    def frozen(self) -> nn.Module:
        vit = load_mllm_vit(self.sources["mllm"])  # the features the MLLM was trained on, whatever the config says
        mllm, _ = load_mllm(self.sources["mllm"])
        merge_lora(mllm)  # frozen here: the adapter folded in, as stories run it, and no LoRA pass per projection
        detokenizer_config = export_model_config(self.sources["detokenizer"], "detokenizer")
        vae = build_vae(detokenizer_config)
        freezing.freeze(vit, mllm, vae)
        return WindowConditioning(vit, mllm, vae, detokenizer_config)

    def build(self) -> nn.Module:
        detokenizer = load_trained_detokenizer(self.sources["detokenizer"])
        freezing.train(detokenizer)
        if self.config.train.detokenizer_adapt.activation_checkpointing:
            detokenizer.unet.enable_gradient_checkpointing()
        return Denoising(detokenizer, self.config.model.loss)

    def collate(self) -> NumpyBatchCollateFn:
        return WindowCollate(image_token_ids(self.text_tokenizer, self.config.model.image_tokens).pad)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_detokenizer(model.detokenizer, uri)
        return {"detokenizer": uri}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return parser


def main() -> None:
    config = config_from_args(arguments().parse_args())

    with start_stage(DetokenizerAdapt, config) as run:
        tokenizer = run.tokenizer()
        windows, report = stage_stream(run.stage, run.config, tokenizer)
        run.fit(windows, run.validation_set(tokenizer))
        run.log_data(report)
        run.register()
    print(run.where_to_look())


if __name__ == "__main__":
    main()
