"""The stage-2 token layout and its labels.

``<bos> caption_0 IMG [INST] caption_1 IMG ... [INST] caption_t IMG_gen <eos>`` with
IMG = ``<img>`` + N image tokens + ``</img>``. Labels (next-token targets, HF convention: the
model shifts) are on the target caption, the target's ``<img>`` and ``<eos>`` only; the
target's image-token positions are trained by feature regression instead. Pieces are encoded
separately and concatenated so every boundary is exact for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from seedstory.tokenizer import INST, image_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedWindow:
    input_ids: np.ndarray
    labels: np.ndarray
    image_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


class StoryLayout:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.ids = image_token_ids(tokenizer, image_tokens)
        self.image_block = [self.ids.boi, *self.ids.image, self.ids.eoi]
        self.inst = self.encode(INST)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def build(self, captions: Sequence[str]) -> TokenizedWindow:
        """The last caption is the target; the frames before it are context."""
        if not captions:
            raise ValueError("a window needs at least the target caption")
        ids: list[int] = [self.ids.bos]
        supervised: list[bool] = [False]
        image: list[bool] = [False]
        target = len(captions) - 1
        for index, caption in enumerate(captions):
            is_target = index == target
            if index:
                ids += self.inst
                supervised += [False] * len(self.inst)
                image += [False] * len(self.inst)
            caption_ids = self.encode(caption)
            ids += caption_ids + self.image_block
            supervised += [is_target] * len(caption_ids) + [is_target] + [False] * (len(self.image_block) - 1)
            image += [False] * len(caption_ids) + [False] + [True] * len(self.ids.image) + [False]
        ids.append(self.ids.eos)
        supervised.append(True)
        image.append(False)
        input_ids = np.array(ids, dtype=np.int64)
        labels = np.where(np.array(supervised), input_ids, IGNORE_INDEX)
        return TokenizedWindow(input_ids, labels, np.array(image, dtype=bool))
