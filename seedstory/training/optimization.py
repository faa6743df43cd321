"""AdamW with decoupled weight decay and a cosine schedule with warm-up (paper appendix C)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from seedstory.config.train import StageConfig


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Decay matrices; never decay biases, norms or 1-D embeddings-like vectors."""
    decay, no_decay = [], []
    for _, param in named:
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(named: Iterable[tuple[str, nn.Parameter]], stage: StageConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(named, stage.weight_decay)
    if not groups:
        raise ValueError("no trainable parameters: the stage's parameter selection froze everything")
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return get_cosine_schedule_with_warmup(optimizer, stage.warmup_steps, stage.max_steps)
