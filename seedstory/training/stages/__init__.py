"""The three SEED-Story training stages, one recipe module each, and the
tiny preset's base pretraining (``tiny_bases``: VAE, ViT and LLM, run by ``seedstory.training.bases``)."""

from __future__ import annotations

RECIPES = {
    "detokenizer_pretrain": "seedstory.training.stages.detokenizer_pretrain:DetokenizerPretrain",
    "story_instruct": "seedstory.training.stages.story_instruct:StoryInstruct",
    "detokenizer_adapt": "seedstory.training.stages.detokenizer_adapt:DetokenizerAdapt",
    "vae_pretrain": "seedstory.training.stages.tiny_bases:VAEPretrain",
    "clip_pretrain": "seedstory.training.stages.tiny_bases:ClipPretrain",
    "llm_pretrain": "seedstory.training.stages.tiny_bases:LLMPretrain",
}
