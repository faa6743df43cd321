"""SEED-Story's models: Qwen-VL ViT tokenizer, LLaMA MLLM with resamplers, SD-XL de-tokenizer.

Builders take ``config.model`` and a device (``meta`` builds shapes only); see each module
for the tensor contracts.
"""

from seedstory.models.detokenizer import ConditionAdapter, Detokenizer, build_detokenizer, build_unet, build_vae
from seedstory.models.lora import attach_lora, merge_lora
from seedstory.models.mllm import MLLMOutput, SeedStoryMLLM, TokenLayout, build_llm, build_mllm
from seedstory.models.vit import VisionTransformer, build_vit, clip_normalize
from seedstory.models.weights import WeightsError, load_tokenizer

__all__ = [
    "ConditionAdapter", "Detokenizer", "MLLMOutput", "SeedStoryMLLM", "TokenLayout", "VisionTransformer",
    "WeightsError", "attach_lora", "build_detokenizer", "build_llm", "build_mllm", "build_unet", "build_vae",
    "build_vit", "clip_normalize", "load_tokenizer", "merge_lora",
]
