"""Toy-world pictures with their captions, and a dual encoder trained on some of them for a few seconds.

The encoder learns from the first stories and is measured on later ones, so the scores that use
it are on pictures it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from seedstory.config import load_config
from seedstory.data.frame_text import caption_ids
from seedstory.data.pixels import vit_pixels
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.render import render_frame
from seedstory.models.dual_encoder import DualEncoder, build_dual_encoder
from seedstory.training.base_weights import tiny_tokenizer

TRAIN_STORIES = range(0, 48)
HELD_OUT_STORIES = range(48, 80)
STEPS = 150
BATCH = 48


@dataclass(frozen=True)
class Pictures:
    frames: list[Image.Image]
    captions: list[str]


def pictures(config, stories: range) -> Pictures:
    toy = config.data.toy.model_copy(update={"stories": max(stories) + 1})
    frames, captions = [], []
    for index in stories:
        story = toy_story(toy, index)
        frames += [render_frame(state, toy.image_size) for state in story.states]
        captions += list(story.record.captions)
    return Pictures(frames, captions)


@pytest.fixture(scope="session")
def toy_config():
    return load_config("tiny", ["data.toy.stories=80"])


@pytest.fixture(scope="session")
def held_out(toy_config) -> Pictures:
    return pictures(toy_config, HELD_OUT_STORIES)


@pytest.fixture(scope="session")
def trained_dual(toy_config) -> tuple[DualEncoder, object]:
    tokenizer = tiny_tokenizer(toy_config)
    model = toy_config.model
    train = pictures(toy_config, TRAIN_STORIES)
    pixels = torch.from_numpy(np.stack([vit_pixels(f, model.vit.image_size) for f in train.frames]))
    ids, masks = zip(*(caption_ids(tokenizer, c, model.text_tower.max_length) for c in train.captions))
    ids, masks = torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(masks))
    torch.manual_seed(0)
    dual = build_dual_encoder(model, len(tokenizer))
    optimizer = torch.optim.AdamW(dual.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        batch = torch.randperm(len(train.frames), generator=generator)[:BATCH]
        loss = dual({"vit_pixels": pixels[batch], "input_ids": ids[batch], "attention_mask": masks[batch]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return dual.eval(), tokenizer
