"""Tiny-preset building blocks shared by the model tests (random init, seeded)."""

from __future__ import annotations

import pytest
import torch

from seedstory.config import load_config
from seedstory.config.model import ModelConfig
from seedstory.tokenizer import BOI, EOI, build_tiny_tokenizer, image_token, image_token_ids

CAPTIONS = [
    "A red circle rolls to the left of the meadow.",
    "The blue square jumps over the green triangle.",
    "Night falls and the yellow star shines above the hills.",
]


@pytest.fixture(scope="session")
def tiny() -> ModelConfig:
    return load_config("tiny").model


@pytest.fixture(scope="session")
def paper() -> ModelConfig:
    return load_config("paper").model


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return build_tiny_tokenizer(CAPTIONS * 4, tiny.llm.vocab_size, tiny.image_tokens)


@pytest.fixture(scope="session")
def token_ids(tokenizer, tiny):
    return image_token_ids(tokenizer, tiny.image_tokens)


@pytest.fixture(scope="session")
def image_text(tiny) -> str:
    return BOI + "".join(image_token(i) for i in range(tiny.image_tokens)) + EOI


@pytest.fixture
def story_batch(tokenizer, image_text, tiny):
    """Two padded sequences: row 0 has a context and a target image, row 1 one context image."""
    texts = [f"{CAPTIONS[0]} {image_text} [INST] {CAPTIONS[1]} {image_text}", f"{CAPTIONS[2]} {image_text}"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, tiny.vit.num_queries, tiny.vit.output_dim, generator=generator)
    return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, "labels": labels,
            "image_features": features, "is_target": torch.tensor([False, True, False])}
