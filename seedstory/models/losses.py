"""The three training objectives (paper section 3.1) and how their weights combine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seedstory.config.model import LossConfig


def cosine_regression_loss(regressed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos over every feature vector; the target is a constant (ViT features)."""
    if regressed.shape != target.shape:
        raise ValueError(f"regressed {list(regressed.shape)} and target {list(target.shape)} features differ in shape")
    return (1 - F.cosine_similarity(regressed.float(), target.detach().float(), dim=-1)).mean()


def diffusion_mse_loss(prediction: torch.Tensor, target: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error; ``weights`` [B] weigh each sample's mean error (a timestep weighting)."""
    if weights is None:
        return F.mse_loss(prediction.float(), target.float())
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=tuple(range(1, prediction.dim())))
    return (weights.float() * per_sample).mean()


def weighted_total(terms: dict[str, torch.Tensor | None], weights: LossConfig) -> torch.Tensor:
    """Sum of ``weight * term`` over the terms present; names are ``LossConfig`` fields."""
    present = {name: value for name, value in terms.items() if value is not None}
    if not present:
        raise ValueError("no loss term to combine: the batch has neither text labels nor target images")
    return sum(getattr(weights, name) * value for name, value in present.items())
