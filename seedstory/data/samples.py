"""Training samples for each stage, cut from one valid story's decoded pictures (numpy, ready for Ray Data).

stage 1: every frame -> ViT input + SD target with SD-XL size/crop conditioning.
stage 2: random windows (``seedstory.data.windows``, new ones every pass) -> token layout, labels,
         image-token mask, ViT input of every frame in the window (context frames first, the target last).
stage 3: stage 2 + the target frame at SD resolution.
Pictures stay uint8 until the training worker's collate normalises them (``seedstory.data.stage_collate``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from seedstory.data.layout import StoryLayout
from seedstory.data.pixels import sd_image, vit_image
from seedstory.data.windows import story_windows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def stage1_samples(images: Sequence[Image.Image], vit_size: int, sd_size: int) -> Iterator[dict[str, np.ndarray]]:
    for image in images:
        sd_pixels, time_ids = sd_image(image, sd_size)
        yield {"vit_pixels": vit_image(image, vit_size), "sd_pixels": sd_pixels, "add_time_ids": time_ids}


@dataclass
class WindowSampler:
    """Stage-2 (and, with ``sd_size``, stage-3) samples; counts the windows dropped as too long."""

    tokenizer: PreTrainedTokenizerBase
    image_tokens: int
    vit_size: int
    window_frames: int
    min_context: int
    max_length: int
    seed: int
    sd_size: int | None = None
    dropped_too_long: int = 0
    layout: StoryLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = StoryLayout(self.tokenizer, self.image_tokens)

    def samples(self, key: str, captions: Sequence[str], images: Sequence[Image.Image],
                pass_index: int = 0) -> Iterator[dict]:
        for window in story_windows(key, len(captions), self.window_frames, self.min_context, self.seed, pass_index):
            tokens = self.layout.build([captions[i] for i in window.frames])
            if len(tokens) > self.max_length:
                self.dropped_too_long += 1
                continue
            pictures = [images[i] for i in window.frames]
            sample = {
                "key": key, "start": window.start, "num_images": len(pictures),
                "input_ids": tokens.input_ids, "labels": tokens.labels, "image_mask": tokens.image_mask,
                "vit_pixels": np.stack([vit_image(picture, self.vit_size) for picture in pictures]),
            }
            if self.sd_size is not None:
                sample["sd_pixels"], sample["add_time_ids"] = sd_image(pictures[-1], self.sd_size)
            yield sample
