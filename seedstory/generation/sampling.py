"""Choosing the next token: greedy, or sampled from a per-story seeded generator (never the global RNG)."""

from __future__ import annotations

import torch

from seedstory.config.generation import StoryConfig


class TokenSampler:
    def __init__(self, config: StoryConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.generator = torch.Generator(device=device).manual_seed(config.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """``logits`` [V] of the last position -> the next token id."""
        if self.config.sampling == "greedy":
            return int(logits.argmax())
        scores = logits.float() / self.config.temperature
        if self.config.top_k:
            kth = torch.topk(scores, min(self.config.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
