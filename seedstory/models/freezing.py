"""What each training stage trains and freezes (the paper's three stages), one function per stage.

Each function sets ``requires_grad`` on the components it is given, puts what trains in train mode
and what is frozen in eval mode (weights loaded from a checkpoint arrive in eval mode, where LoRA's
dropout and activation checkpointing are off), and returns the trainable parameters by qualified
name (``<component>.<parameter>``), ready for an optimizer.
"""

from __future__ import annotations

from peft import PeftModel
from torch import nn

from seedstory.models.detokenizer import Detokenizer
from seedstory.models.mllm import SeedStoryMLLM

ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".trainable_tokens_delta.", ".modules_to_save.")


def _trainable(components: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    return {f"{component}.{name}": parameter for component, module in components.items()
            for name, parameter in module.named_parameters() if parameter.requires_grad}


def _freeze(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False).eval()


def _train(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(True).train()


def is_adapter_parameter(name: str) -> bool:
    """A peft parameter stage 2 trains: LoRA factors, new-token rows, norms kept in ``modules_to_save``."""
    return any(marker in f".{name}" for marker in ADAPTER_MARKERS)


def detokenizer_pretrain(vit: nn.Module, detokenizer: Detokenizer) -> dict[str, nn.Parameter]:
    """Stage 1: condition adapter + UNet train; ViT and VAE frozen."""
    _freeze(vit, detokenizer.vae)
    _train(detokenizer.adapter, detokenizer.unet)
    return _trainable({"condition_adapter": detokenizer.adapter, "unet": detokenizer.unet})


def story_instruct(vit: nn.Module, mllm: SeedStoryMLLM) -> dict[str, nn.Parameter]:
    """Stage 2: LoRA, new-token rows, norms, both resamplers train; ViT and the LLM's base weights frozen."""
    if not isinstance(mllm.llm, PeftModel):
        raise ValueError("stage 2 trains a LoRA adapter: call seedstory.models.lora.attach_lora first")
    _freeze(vit, mllm.llm)
    for name, parameter in mllm.llm.named_parameters():
        if is_adapter_parameter(name):
            parameter.requires_grad_(True)
    mllm.llm.train()  # the frozen base too: LoRA's dropout runs inside its layers
    _train(mllm.input_resampler, mllm.output_resampler)
    return _trainable({"llm": mllm.llm, "input_resampler": mllm.input_resampler,
                       "output_resampler": mllm.output_resampler})


def detokenizer_adapt(vit: nn.Module, mllm: SeedStoryMLLM, detokenizer: Detokenizer) -> dict[str, nn.Parameter]:
    """Stage 3: UNet + condition adapter train on the MLLM's regressed features; MLLM, ViT, VAE frozen."""
    _freeze(vit, mllm, detokenizer.vae)
    _train(detokenizer.adapter, detokenizer.unet)
    return _trainable({"condition_adapter": detokenizer.adapter, "unet": detokenizer.unet})
