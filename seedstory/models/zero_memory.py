"""Per-GPU memory of each stage's model states under ZeRO-2 and ZeRO-3, from meta-device parameter counts.

The trainable parameters are costed with DeepSpeed's own estimators (bf16 parameters and gradients,
fp32 master weights and Adam moments, no offload). Frozen parameters hold bf16 weights only: replicated
on every GPU when they sit outside the engine, partitioned with the rest when ZeRO-3 holds them.
Activations, buffers and the communication buckets are not model states and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from torch import nn

from seedstory.config.model import ModelConfig
from seedstory.models import freezing
from seedstory.models.detokenizer import build_detokenizer
from seedstory.models.lora import attach_lora
from seedstory.models.mllm import build_mllm
from seedstory.models.vit import build_vit

FROZEN_BYTES = 2  # a bf16 weight, no gradient, no optimizer state


@dataclass(frozen=True)
class StageParameters:
    trainable: int
    frozen: int
    largest_trainable_module: int  # ZeRO-3 gathers one module's parameters at a time

    def per_gpu_bytes(self, gpus: int) -> dict[str, int]:
        """Model-state bytes per GPU: ZeRO-2; ZeRO-3 over every parameter; ZeRO-3 over the trainable ones
        with the frozen ones replicated outside the engine."""
        _, zero2 = estimate_zero2_model_states_mem_needs(self.trainable, gpus, 1, cpu_offload=False)
        _, zero3, _ = estimate_zero3_model_states_mem_needs(
            self.trainable, self.largest_trainable_module, gpus, 1, cpu_offload=False, cpu_offload_params=False)
        return {
            "zero2": zero2 + FROZEN_BYTES * self.frozen,
            "zero3_everything": zero3 + FROZEN_BYTES * self.frozen // gpus,
            "zero3_trainable_only": zero3 + FROZEN_BYTES * self.frozen,
        }


def _split(components: list[nn.Module]) -> StageParameters:
    trainable = freezing.trainable_parameters({str(index): module for index, module in enumerate(components)})
    ids = {id(p) for p in trainable.values()}
    everything = {id(p): p for module in components for p in module.parameters()}
    largest = max(sum(p.numel() for p in sub.parameters(recurse=False) if id(p) in ids)
                  for component in components for sub in component.modules())
    count = sum(p.numel() for p in trainable.values())
    return StageParameters(trainable=count, frozen=sum(p.numel() for p in everything.values()) - count,
                           largest_trainable_module=largest)


def stage_parameters(config: ModelConfig) -> dict[str, StageParameters]:
    """What each of the three stages trains and holds frozen (as their recipes freeze them), on the meta device."""
    vit = build_vit(config, device="meta")
    detokenizer = build_detokenizer(config, device="meta")
    freezing.freeze(vit, detokenizer.vae)
    freezing.train(detokenizer.adapter, detokenizer.unet)
    stage1 = _split([vit, detokenizer])
    with_lora = attach_lora(build_mllm(config, device="meta"), config.lora)
    freezing.train_adapter(with_lora)
    stage2 = _split([vit, with_lora])
    mllm = build_mllm(config, device="meta")  # stage 3 reads stage 2's export, its adapter merged
    freezing.freeze(mllm)
    stage3 = _split([vit, mllm, detokenizer])
    return {"detokenizer_pretrain": stage1, "story_instruct": stage2, "detokenizer_adapt": stage3}
