"""What stages 1 and 3 train: the de-tokenizer (condition adapter + SD-XL UNet) on the diffusion noise MSE."""

from __future__ import annotations

import torch
from torch import nn

from seedstory.config.model import LossConfig
from seedstory.models.detokenizer import Detokenizer
from seedstory.models.losses import weighted_total


class Denoising(nn.Module):
    """Inputs come from the stage's frozen networks: ``latents`` [B, C, s, s] (the VAE's, scaled), ``features``
    [B, Nv, Dv] (the ViT's in stage 1, the MLLM's regressed ones in stage 3), ``time_ids`` [B, 6]."""

    def __init__(self, detokenizer: Detokenizer, loss_weights: LossConfig) -> None:
        super().__init__()
        self.detokenizer = detokenizer
        self.loss_weights = loss_weights

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mse = self.detokenizer.denoising_loss(inputs["latents"], inputs["features"], time_ids=inputs["time_ids"])
        return {"loss": weighted_total({"diffusion_mse": mse}, self.loss_weights), "diffusion_mse": mse}
