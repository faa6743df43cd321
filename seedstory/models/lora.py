"""LoRA on the MLLM's LLM through peft, with the new image tokens' rows trainable.

The new tokens' input and output rows train as peft *trainable tokens* (a small delta per
row) instead of unfreezing the whole 32k-row matrices, and the norms as ``modules_to_save``:
everything stage 2 changes in the LLM is then in one peft adapter folder.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model

from seedstory.config.model import LoRAConfig
from seedstory.models.mllm import SeedStoryMLLM, TokenLayout


def peft_lora_config(config: LoRAConfig, layout: TokenLayout) -> LoraConfig:
    rows = layout.new_tokens
    return LoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(config.target_modules),
        modules_to_save=list(config.modules_to_save) or None,
        trainable_token_indices={"embed_tokens": rows, "lm_head": rows}, task_type="CAUSAL_LM",
    )


def attach_lora(mllm: SeedStoryMLLM, config: LoRAConfig) -> SeedStoryMLLM:
    """Wrap ``mllm.llm`` in a fresh peft LoRA adapter (in place; returns ``mllm``)."""
    if isinstance(mllm.llm, PeftModel):
        raise ValueError("the MLLM's LLM already carries a peft adapter")
    mllm.llm = get_peft_model(mllm.llm, peft_lora_config(config, mllm.layout))
    return mllm


def merge_lora(mllm: SeedStoryMLLM) -> SeedStoryMLLM:
    """Fold the adapter into the base weights, as stories run the MLLM; returns ``mllm`` with a plain LLM
    (unchanged when an export holds its LLM's full weights instead of an adapter)."""
    if isinstance(mllm.llm, PeftModel):
        mllm.llm = mllm.llm.merge_and_unload()
    return mllm
