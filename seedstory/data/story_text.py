"""Stories as plain text: what the tiny preset's LLM base is pretrained on.

One sample per story: ``<bos> caption_0 [INST] caption_1 ... [INST] caption_n <eos>``,
cut to ``data.text_max_length``, every token a target. That is stage 2's layout without the
images, so the base already speaks the world's language and knows how its states follow one
another before LoRA teaches it the image tokens, as Qwen-VL's LLM arrives pretrained. It reads the
train split's stories and a text corpus (``data.text_jsonl``, stories without pictures: the toy
world's ``text.jsonl``). Text needs no decoding: the samples are built on the driver and handed to
Ray Data as rows, read again every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.badrecords import BadRecordError
from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.records import parse_captions, parse_story
from seedstory.data.sources import expand_jsonl, read_story_lines
from seedstory.data.story_sets import Split, split_jsonl
from seedstory.tokenizer import INST


def _story_ids(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]) -> list[int]:
    inst = tokenizer.encode(INST, add_special_tokens=False)
    ids = [tokenizer.bos_token_id]
    for index, caption in enumerate(captions):
        ids += (inst if index else []) + tokenizer.encode(caption, add_special_tokens=False)
    return ids


def story_text_ids(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int) -> np.ndarray:
    """The story's token ids, cut to ``max_length``."""
    ids = _story_ids(tokenizer, captions) + [tokenizer.eos_token_id]
    return np.asarray(ids[:max_length], dtype=np.int64)


def next_caption_prompt(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]) -> list[int]:
    """The ids after which an LLM pretrained on ``story_text_ids`` writes the caption that comes next."""
    return _story_ids(tokenizer, captions) + tokenizer.encode(INST, add_special_tokens=False)


def _read_captions(uris: Sequence[str], parse: Callable[[str], tuple[str, ...]],
                   what: str) -> tuple[list[tuple[str, ...]], int]:
    stories, bad = [], 0
    for line in read_story_lines(expand_jsonl(uris)):
        try:
            stories.append(parse(line.text))
        except BadRecordError:
            bad += 1
    if not stories:
        raise ValueError(f"{what} ({', '.join(uris)}) holds no sound story")
    return stories, bad


def story_captions(config: SeedStoryConfig, split: Split) -> tuple[list[tuple[str, ...]], int]:
    """The captions of every sound story of ``split``, and how many lines were not a sound story."""
    return _read_captions(split_jsonl(config, split), lambda text: parse_story(text).captions, f"the {split} split")


def _pretraining_ids(config: SeedStoryConfig, tokenizer: PreTrainedTokenizerBase,
                     stories: list[tuple[str, ...]]) -> list[np.ndarray]:
    length = config.data.text_max_length or config.data.max_length
    return [story_text_ids(tokenizer, captions, length) for captions in stories]


def story_texts(config: SeedStoryConfig, split: Split, tokenizer: PreTrainedTokenizerBase) -> tuple[list[np.ndarray], int]:
    """Every sound story of ``split`` as the LLM base reads it, and how many lines were not a sound story."""
    stories, bad = story_captions(config, split)
    return _pretraining_ids(config, tokenizer, stories), bad


def text_stories(uris: Sequence[str]) -> tuple[list[tuple[str, ...]], int]:
    """The captions of every story in text JSONL files (pictures unread), and how many lines were not a story."""
    return _read_captions(uris, parse_captions, "the text corpus")


def text_corpus(config: SeedStoryConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[list[np.ndarray], int]:
    """``data.text_jsonl``'s stories as the LLM base reads them (none when unset), and how many lines were
    not a story."""
    if not config.data.text_jsonl:
        return [], 0
    stories, bad = text_stories(config.data.text_jsonl)
    return _pretraining_ids(config, tokenizer, stories), bad


def mixed_in(texts: list[np.ndarray], corpus: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """``corpus`` dealt among ``texts`` at seeded random places, each keeping its own order: the split's
    stories and the corpus's mix from the first step (a stream's shuffle buffer reaches only a few rows
    ahead), and without a corpus nothing moves."""
    from_corpus = np.zeros(len(texts) + len(corpus), dtype=bool)
    from_corpus[np.random.default_rng(seed).choice(len(from_corpus), size=len(corpus), replace=False)] = True
    split, extra = iter(texts), iter(corpus)
    return [next(extra) if place else next(split) for place in from_corpus]


def story_text_dataset(texts: list[np.ndarray], config: SeedStoryConfig) -> ray.data.MaterializedDataset:
    """One row per story, materialised: training re-reads it every pass (``seedstory.data.streams.EpochStream``)."""
    settings = config.train.llm_pretrain
    if len(texts) < settings.micro_batch_size * settings.num_workers:
        raise ValueError(f"{len(texts)} training stories cannot fill a micro-batch of {settings.micro_batch_size} "
                         f"on each of {settings.num_workers} workers: lower train.llm_pretrain.micro_batch_size "
                         "or write more stories")
    return ray.data.from_items([{"input_ids": ids} for ids in texts]).materialize()


class TextCollate(NumpyBatchCollateFn):
    """Pads token ids with ``pad_id`` on the right; labels are the ids themselves, -100 on the padding.

    No attention mask: under causal attention no token attends to the pads after it, and their labels
    are ignored, so the loss is the masked one; without a mask SDPA runs its fused causal kernel (one
    thread, 8 toy stories: 0.49 s a training step with the mask, 0.35 s without)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids in batch["input_ids"]]
        input_ids = torch.full((len(lengths), max(lengths)), self.pad_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, length in enumerate(lengths):
            input_ids[row, :length] = labels[row, :length] = torch.from_numpy(
                np.asarray(batch["input_ids"][row], dtype=np.int64))
        return {"input_ids": input_ids, "labels": labels}
