"""Stage 3: the de-tokenizer adapts to the features the trained MLLM regresses.

Starts from stage 2's MLLM and stage 1's de-tokenizer (``sources``: ``mllm``, ``detokenizer``).
Trained (inside the DeepSpeed engine, ZeRO-3 partitions it): stage 1's condition adapter + UNet, in
full, on the diffusion noise MSE of each window's target frame. Frozen (outside it, never gathered):
the ViT, which reads the window's frames; the MLLM, which reads the window with the target frame as
the image to generate and regresses its features (the condition); the VAE, which encodes the target.
"""

from __future__ import annotations

from functools import cached_property

import torch
from diffusers import AutoencoderKL
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.config.model import ModelConfig
from seedstory.data.pipeline import WindowCollate
from seedstory.models import freezing
from seedstory.models.detokenizer import build_vae, encode_frames
from seedstory.models.export import export_detokenizer, export_model_config, load_mllm
from seedstory.models.mllm import SeedStoryMLLM
from seedstory.models.partitioned import load_trained_detokenizer
from seedstory.models.vit import build_vit
from seedstory.models.weights import load_tokenizer
from seedstory.tokenizer import image_token_ids
from seedstory.training.stages.base import Denoising, SeedStoryStage, target_images


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
        regressed = self.mllm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              image_features=features, is_target=target_images(batch["num_images"])).regressed
        return {"latents": encode_frames(self.vae, self.config, batch["sd_pixels"]), "features": regressed,
                "time_ids": batch["add_time_ids"]}


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

    def frozen(self) -> nn.Module:
        vit = build_vit(self.config.model)
        mllm, _ = load_mllm(self.sources["mllm"])
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
        return WindowCollate(image_token_ids(self._tokenizer, self.config.model.image_tokens).pad)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_detokenizer(model.detokenizer, uri)
        return {"detokenizer": uri}
