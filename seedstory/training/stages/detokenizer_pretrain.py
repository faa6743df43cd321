"""Stage 1: the de-tokenizer learns to paint a frame from its frozen ViT features.

Trained (inside the DeepSpeed engine): condition adapter + SD-XL UNet, on the diffusion noise MSE.
Frozen (outside it): the ViT, which reads the frame, and the VAE, which encodes it to latents.
Batches are single frames: ``vit_pixels`` [B, 3, Sv, Sv], ``sd_pixels`` [B, 3, S, S] in [-1, 1],
``add_time_ids`` [B, 6].
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from seedstory.config.model import ModelConfig
from seedstory.models import freezing
from seedstory.models.detokenizer import build_vae, encode_frames
from seedstory.models.export import export_detokenizer
from seedstory.models.partitioned import build_trained_detokenizer
from seedstory.models.vit import build_vit
from seedstory.training.stages.base import Denoising, SeedStoryStage

FRAME_FIELDS = ("vit_pixels", "sd_pixels", "add_time_ids")


class FrameEncoder(nn.Module):
    """A frame -> its ViT features (the condition) and its VAE latents (what is denoised)."""

    def __init__(self, vit: nn.Module, vae: AutoencoderKL, config: ModelConfig) -> None:
        super().__init__()
        self.vit = vit
        self.vae = vae
        self.config = config

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"latents": encode_frames(self.vae, self.config, batch["sd_pixels"]),
                "features": self.vit(batch["vit_pixels"]), "time_ids": batch["add_time_ids"]}


class FrameCollate(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.array(batch[name])) for name in FRAME_FIELDS}


class DetokenizerPretrain(SeedStoryStage):
    WEIGHTS = ("vit", "vae")

    def frozen(self) -> nn.Module:
        vit, vae = build_vit(self.config.model), build_vae(self.config.model)
        freezing.freeze(vit, vae)
        return FrameEncoder(vit, vae, self.config.model)

    def build(self) -> nn.Module:
        detokenizer = build_trained_detokenizer(self.config.model)
        freezing.train(detokenizer)
        if self.config.train.detokenizer_pretrain.activation_checkpointing:
            detokenizer.unet.enable_gradient_checkpointing()
        return Denoising(detokenizer, self.config.model.loss)

    def collate(self) -> NumpyBatchCollateFn:
        return FrameCollate()

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_detokenizer(model.detokenizer, uri)
        return {"detokenizer": uri}
