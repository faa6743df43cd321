"""Stage 1: the de-tokenizer learns to paint a frame from its frozen ViT features.

Condition adapter + SD-XL UNet train on the diffusion noise MSE; ViT and VAE stay frozen.
Batches are single frames: ``vit_pixels`` [B, 3, Sv, Sv], ``sd_pixels`` [B, 3, S, S] in [-1, 1],
``add_time_ids`` [B, 6].
"""

from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from seedstory.config.model import LossConfig
from seedstory.models import freezing
from seedstory.models.detokenizer import Detokenizer, build_detokenizer
from seedstory.models.export import export_detokenizer
from seedstory.models.losses import weighted_total
from seedstory.models.vit import build_vit
from seedstory.training.stages.base import SeedStoryStage, frozen_features

FRAME_FIELDS = ("vit_pixels", "sd_pixels", "add_time_ids")


class DetokenizerPretrainModel(nn.Module):
    def __init__(self, vit: nn.Module, detokenizer: Detokenizer, loss_weights: LossConfig) -> None:
        super().__init__()
        self.vit = vit
        self.detokenizer = detokenizer
        self.loss_weights = loss_weights

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = frozen_features(self.vit, batch["vit_pixels"])
        mse = self.detokenizer.loss(batch["sd_pixels"], features, time_ids=batch["add_time_ids"])
        return {"loss": weighted_total({"diffusion_mse": mse}, self.loss_weights), "diffusion_mse": mse}


class FrameCollate(NumpyBatchCollateFn):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.array(batch[name])) for name in FRAME_FIELDS}


class DetokenizerPretrain(SeedStoryStage):
    WEIGHTS = ("vit", "vae")

    def build(self) -> nn.Module:
        model = self.config.model
        vit, detokenizer = build_vit(model), build_detokenizer(model)
        freezing.detokenizer_pretrain(vit, detokenizer)
        if self.config.train.detokenizer_pretrain.activation_checkpointing:
            detokenizer.unet.enable_gradient_checkpointing()
        return DetokenizerPretrainModel(vit, detokenizer, model.loss)

    def collate(self) -> NumpyBatchCollateFn:
        return FrameCollate()

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_detokenizer(model.detokenizer, uri)
        return {"detokenizer": uri}
