"""The three SEED-Story training stages (DESIGN.md stage table), one recipe module each."""

from __future__ import annotations

RECIPES = {
    "detokenizer_pretrain": "seedstory.training.stages.detokenizer_pretrain:DetokenizerPretrain",
    "story_instruct": "seedstory.training.stages.story_instruct:StoryInstruct",
    "detokenizer_adapt": "seedstory.training.stages.detokenizer_adapt:DetokenizerAdapt",
}
