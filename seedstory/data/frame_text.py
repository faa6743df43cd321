"""Frames with their captions: the samples the tiny preset's bases (VAE, ViT + text tower) learn from.

One sample per frame: ``vit_pixels`` (CLIP-normalised, ViT size), ``sd_pixels`` ([-1, 1], SD
size), the caption's token ids cut or padded to ``model.text_tower.max_length`` with their
``attention_mask``, and the caption and story key for evaluation. Decoding is the costly part
and the bases train for many epochs on a small split, so the split is decoded once and
materialised in the object store; training re-reads it every pass
(``seedstory.data.streams.EpochStream``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.pipeline import DataReport, SampleCut, groups_of, new_ledger, story_samples
from seedstory.data.pixels import sd_target, vit_pixels
from seedstory.data.stories import Story
from seedstory.data.story_sets import Split, split_stories
from seedstory.models.dual_encoder import require_text_tower

COLUMNS = ("key", "frame", "caption", "vit_pixels", "sd_pixels", "input_ids", "attention_mask")


def caption_ids(tokenizer: PreTrainedTokenizerBase, caption: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """[max_length] token ids (cut, then padded) and the mask of the real ones."""
    ids = tokenizer.encode(caption)[:max_length]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padded = np.full(max_length, pad, dtype=np.int64)
    padded[:len(ids)] = ids
    mask = np.zeros(max_length, dtype=np.int64)
    mask[:len(ids)] = 1
    return padded, mask


class FrameTextCut(SampleCut):
    """Every frame of a story as one sample, with its caption's token ids."""

    names, stacked = COLUMNS, True

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, vit_size: int, sd_size: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.vit_size, self.sd_size = vit_size, sd_size

    def __call__(self, story: Story, pass_index: int) -> Iterator[dict]:
        for index, (caption, image) in enumerate(zip(story.captions, story.images)):
            ids, mask = caption_ids(self.tokenizer, caption, self.max_length)
            yield {"key": story.key, "frame": index, "caption": caption, "vit_pixels": vit_pixels(image, self.vit_size),
                   "sd_pixels": sd_target(image, self.sd_size)[0], "input_ids": ids, "attention_mask": mask}


def frame_text_dataset(config: SeedStoryConfig, split: Split,
                       tokenizer: PreTrainedTokenizerBase) -> tuple[ray.data.MaterializedDataset, DataReport]:
    """Every frame of ``split`` once, materialised: ``train`` in a shuffled story order with the frames of
    the stories in each group interleaved (a story's frames are near-duplicates of each other, poor
    negatives for one another in a batch), ``val``/``test`` in file order."""
    stories = split_stories(config, split)
    shuffle = split == "train"
    data, model = config.data, config.model
    order = np.random.default_rng([data.seed, 0]).permutation(len(stories)) if shuffle else range(len(stories))
    cut = FrameTextCut(tokenizer, require_text_tower(model).max_length, model.vit.image_size, model.sd_image_size)
    ledger = new_ledger(stories, data)
    samples = story_samples(stories, data, groups_of(order, 0, data.preprocess_batch_size), cut, ledger,
                            data.seed if shuffle else None)
    return samples.materialize(), DataReport(ledger)


class ColumnsCollate(NumpyBatchCollateFn):
    """The named numeric columns of a numpy batch as tensors."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.asarray(batch[name])) for name in self.names}
