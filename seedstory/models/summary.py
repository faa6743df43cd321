"""Parameter counts per component, built on the meta device (no memory, no weights read)."""

from __future__ import annotations

from torch import nn

from seedstory.config.model import ModelConfig
from seedstory.models.detokenizer import build_detokenizer
from seedstory.models.lora import attach_lora
from seedstory.models.mllm import build_mllm
from seedstory.models.vit import build_vit

COMPONENTS = ("vit", "input_resampler", "llm", "output_resampler", "condition_adapter", "unet", "vae")


def count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Each component's parameters, ``total`` of those, and ``llm_adapter`` (what stage 2 adds to the LLM).

    The LLM is sized for ``llm.vocab_size`` plus BOI, EOI and the image tokens.
    """
    vit = build_vit(config, device="meta")
    mllm = build_mllm(config, device="meta")
    detokenizer = build_detokenizer(config, device="meta")
    modules = {"vit": vit, "input_resampler": mllm.input_resampler, "llm": mllm.llm,
               "output_resampler": mllm.output_resampler, "condition_adapter": detokenizer.adapter,
               "unet": detokenizer.unet, "vae": detokenizer.vae}
    counts = {name: count(modules[name]) for name in COMPONENTS}
    counts["total"] = sum(counts.values())
    counts["llm_adapter"] = count(attach_lora(mllm, config.lora).llm, trainable_only=True)
    return counts
