"""Stories as text for the LLM base: stage 2's layout without images, padded batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seedstory.config import load_config
from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.story_text import (
    TextCollate, mixed_in, next_caption_prompt, story_text_dataset, story_text_ids, text_corpus,
)
from seedstory.models.mllm import build_llm
from seedstory.training.base_weights import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(load_config("tiny", ["data.toy.stories=2"]))


def test_a_story_as_text_is_the_stage_two_layout_without_images(tokenizer):
    ids = story_text_ids(tokenizer, ["a cat sits.", "a cat runs."], 64)
    assert tokenizer.decode(ids, skip_special_tokens=False).replace(" ", "") == (
        f"{tokenizer.bos_token}acatsits.[INST]acatruns.{tokenizer.eos_token}")
    assert len(story_text_ids(tokenizer, ["a cat sits."] * 50, 64)) == 64


def test_the_next_caption_prompt_is_the_story_so_far_up_to_the_next_inst(tokenizer):
    ids = next_caption_prompt(tokenizer, ["a cat sits.", "a cat runs."])
    assert tokenizer.decode(ids, skip_special_tokens=False).replace(" ", "") == (
        f"{tokenizer.bos_token}acatsits.[INST]acatruns.[INST]")
    assert ids == story_text_ids(tokenizer, ["a cat sits.", "a cat runs.", "x"], 64).tolist()[:len(ids)]


def test_text_batches_pad_with_ignored_labels(tokenizer):
    pad = tokenizer.pad_token_id
    batch = TextCollate(pad)({"input_ids": np.array([np.array([1, 2, 3]), np.array([4])], dtype=object)})
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, pad, pad]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
    assert "attention_mask" not in batch


def test_a_padded_batch_without_a_mask_has_the_masked_loss_and_each_storys_own_logits(tokenizer):
    torch.manual_seed(0)
    llm = build_llm(load_config("tiny").model, vocab_size=len(tokenizer)).eval()
    stories = [np.arange(3, 40) % len(tokenizer), np.arange(5, 17) % len(tokenizer)]
    batch = TextCollate(tokenizer.pad_token_id)({"input_ids": np.array(stories, dtype=object)})
    mask = (batch["labels"] != IGNORE_INDEX).long()
    with torch.no_grad():
        unmasked, masked = llm(**batch), llm(**batch, attention_mask=mask)
        alone = llm(input_ids=torch.as_tensor(stories[1])[None]).logits[0]
    assert unmasked.loss.item() == pytest.approx(masked.loss.item(), abs=1e-6)
    torch.testing.assert_close(unmasked.logits[1, :len(stories[1])], alone, atol=1e-5, rtol=0)


def test_too_few_stories_for_a_batch_per_worker_is_named(tokenizer):
    config = load_config("tiny", ["train.llm_pretrain.micro_batch_size=4"])
    with pytest.raises(ValueError, match=r"3 training stories cannot fill a micro-batch of 4 on each of 2 workers"):
        story_text_dataset([np.array([1, 2])] * 3, config)


def test_the_text_corpus_reads_captions_with_or_without_pictures_and_counts_the_rest(tokenizer, tmp_path):
    corpus = tmp_path / "text.jsonl"
    long_story = ["a cat sits on the mat."] * 40
    corpus.write_text("\n".join([
        json.dumps({"id": 1, "captions": long_story}),
        json.dumps({"id": 2, "images": ["a.jpg", "b.jpg"], "captions": ["a cat sits.", "a cat runs."]}),
        json.dumps({"id": 3, "captions": []}),
        json.dumps({"id": 4, "captions": ["a cat sits.", "  "]}),
        json.dumps({"id": 5, "text": "no captions"}),
        "{not json",
    ]) + "\n")
    config = load_config("tiny", [f"data.text_jsonl=[{corpus}]", "data.text_max_length=48"])
    texts, bad = text_corpus(config, tokenizer)
    assert bad == 4
    assert [ids.tolist() for ids in texts] == [story_text_ids(tokenizer, long_story, 48).tolist(),
                                               story_text_ids(tokenizer, ["a cat sits.", "a cat runs."], 48).tolist()]
    assert len(texts[0]) == 48
    assert text_corpus(load_config("tiny"), tokenizer) == ([], 0)


def test_a_text_corpus_without_a_story_is_named(tokenizer, tmp_path):
    corpus = tmp_path / "text.jsonl"
    corpus.write_text(json.dumps({"captions": []}) + "\n")
    with pytest.raises(ValueError, match=rf"the text corpus \({corpus}\) holds no sound story"):
        text_corpus(load_config("tiny", [f"data.text_jsonl=[{corpus}]"]), tokenizer)



def test_a_corpus_is_dealt_among_the_split_s_stories_each_keeping_its_order():
    split, corpus = [np.array([index]) for index in range(30)], [np.array([100 + index]) for index in range(60)]
    mixed = [int(ids[0]) for ids in mixed_in(split, corpus, seed=0)]
    assert sorted(mixed) == list(range(30)) + list(range(100, 160))
    assert [i for i in mixed if i < 100] == list(range(30)) and [i for i in mixed if i >= 100] == list(range(100, 160))
    assert any(i < 100 for i in mixed[:15]) and any(i >= 100 for i in mixed[:15])
    assert mixed == [int(ids[0]) for ids in mixed_in(split, corpus, seed=0)]
    assert mixed != [int(ids[0]) for ids in mixed_in(split, corpus, seed=1)]
    assert [int(ids[0]) for ids in mixed_in(split, [], seed=0)] == list(range(30))
