"""Frozen and trained networks: ``requires_grad`` and the mode that goes with it.

Weights loaded from a checkpoint arrive in eval mode, where LoRA's dropout and activation
checkpointing are off, so what trains is put in train mode and what is frozen in eval mode.
"""

from __future__ import annotations

from peft import PeftModel
from torch import nn

from seedstory.models.mllm import SeedStoryMLLM

ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".trainable_tokens_delta.", ".modules_to_save.")


def freeze(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False).eval()


def train(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(True).train()


def is_adapter_parameter(name: str) -> bool:
    """A peft parameter stage 2 trains: LoRA factors, new-token rows, norms kept in ``modules_to_save``."""
    return any(marker in f".{name}" for marker in ADAPTER_MARKERS)


def train_adapter(mllm: SeedStoryMLLM) -> None:
    """Stage 2's MLLM: the LoRA adapter (factors, new-token rows, norms) and both resamplers train; the LLM's
    base weights stay frozen, in train mode so that LoRA's dropout runs inside its layers."""
    if not isinstance(mllm.llm, PeftModel):
        raise ValueError("stage 2 trains a LoRA adapter: call seedstory.models.lora.attach_lora first")
    freeze(mllm.llm)
    for name, parameter in mllm.llm.named_parameters():
        if is_adapter_parameter(name):
            parameter.requires_grad_(True)
    mllm.llm.train()
    train(mllm.input_resampler, mllm.output_resampler)


def trainable_parameters(components: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """``<component>.<parameter>`` -> every parameter that requires grad."""
    return {f"{component}.{name}": parameter for component, module in components.items()
            for name, parameter in module.named_parameters() if parameter.requires_grad}
