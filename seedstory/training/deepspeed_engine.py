"""DeepSpeed ZeRO from a stage config: the same code on CPU (gloo) and GPU (NCCL).

The optimizer is a plain torch AdamW handed to DeepSpeed (``zero_allow_untested_optimizer``):
DeepSpeed's own fused/CPU Adam would JIT-compile kernels on every fresh machine for no gain at
this scale, and the torch optimizer's state is checkpointed by DeepSpeed all the same.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import deepspeed
import torch
from torch import nn

from seedstory.config.train import StageConfig
from seedstory.training.optimization import build_optimizer, build_scheduler


def deepspeed_config(stage: StageConfig, world_size: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage.zero_stage}
    if stage.zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "stage3_param_persistence_threshold": 0})
    return {
        "train_micro_batch_size_per_gpu": stage.micro_batch_size,
        "gradient_accumulation_steps": stage.grad_accum_steps,
        "train_batch_size": stage.micro_batch_size * stage.grad_accum_steps * world_size,
        "gradient_clipping": stage.grad_clip,
        "bf16": {"enabled": stage.bf16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def initialize(model: nn.Module, stage: StageConfig, world_size: int) -> deepspeed.DeepSpeedEngine:
    """Wrap ``model``; only parameters with ``requires_grad`` are optimised."""
    optimizer = build_optimizer(model.named_parameters(), stage)
    scheduler = build_scheduler(optimizer, stage)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(stage, world_size),
        dist_init_required=False,
    )
    return engine


def partitioned_build(stage: StageConfig, world_size: int) -> AbstractContextManager:
    """Under ZeRO-3, a context in which each submodule's parameters are partitioned across the workers as it is
    made (in the compute dtype), so no worker ever holds the whole trained network; otherwise none."""
    if stage.zero_stage != 3:
        return nullcontext()
    # DeepSpeed's own view of the process group Ray Train made, for the world size its config checks.
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), dist_init_required=False)
    return deepspeed.zero.Init(config_dict_or_path=deepspeed_config(stage, world_size))


def compute_dtype(stage: StageConfig) -> torch.dtype:
    return torch.bfloat16 if stage.bf16 else torch.float32
