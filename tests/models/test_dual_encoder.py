"""The CLIP-style dual encoder the tiny preset pretrains its ViT with: shapes, loss, export, retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seedstory.data.frame_text import caption_ids
from seedstory.models.dual_encoder import (
    DualEncoder, TextEncoder, build_dual_encoder, export_dual_encoder, load_dual_encoder, require_text_tower,
    retrieval_top1,
)
from seedstory.models.vit import build_vit
from seedstory.models.weights import WeightsError
from tests.models.conftest import CAPTIONS


def pairs(tiny, tokenizer, count: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = [caption_ids(tokenizer, CAPTIONS[i % len(CAPTIONS)] + f" {i}", tiny.text_tower.max_length)
           for i in range(count)]
    size = tiny.vit.image_size
    return {"vit_pixels": torch.randn(count, 3, size, size, generator=generator),
            "input_ids": torch.from_numpy(np.stack([i for i, _ in ids])),
            "attention_mask": torch.from_numpy(np.stack([m for _, m in ids]))}


@pytest.fixture
def dual(tiny, tokenizer) -> DualEncoder:
    torch.manual_seed(0)
    return build_dual_encoder(tiny, len(tokenizer))


def test_embeddings_are_unit_vectors_in_the_joint_space(dual, tiny, tokenizer):
    batch = pairs(tiny, tokenizer, 3)
    images = dual.encode_image(batch["vit_pixels"])
    text = dual.encode_text(batch["input_ids"], batch["attention_mask"])
    assert images.shape == text.shape == (3, tiny.text_tower.embed_dim)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3)) and torch.allclose(text.norm(dim=-1), torch.ones(3))
    assert dual.similarity(text, images[:2]).shape == (3, 2)


def test_padding_does_not_change_a_caption_embedding(dual, tiny, tokenizer):
    ids, mask = caption_ids(tokenizer, CAPTIONS[0], tiny.text_tower.max_length)
    short = int(mask.sum())
    full = dual.encode_text(torch.from_numpy(ids)[None], torch.from_numpy(mask)[None])
    cut = dual.encode_text(torch.from_numpy(ids[:short])[None], torch.from_numpy(mask[:short])[None])
    assert torch.allclose(full, cut, atol=1e-5)


def test_contrastive_loss_falls_and_pairs_are_found(dual, tiny, tokenizer):
    batch = pairs(tiny, tokenizer, 8)
    optimizer = torch.optim.AdamW(dual.parameters(), lr=3e-3)
    first = dual(batch)
    assert set(first) == {"loss", "contrastive", "batch_top1", "logit_scale"}
    for _ in range(25):
        terms = dual(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    assert terms["loss"] < 0.5 * first["loss"]
    assert terms["batch_top1"] == 1.0


def test_retrieval_counts_a_picture_once_and_scores_the_own_frame(dual, tiny, tokenizer):
    batch = pairs(tiny, tokenizer, 6)
    shows = ["a", "b", "c", "d", "e", "a"]  # frame 5 shows what frame 0 shows: it is left out
    with torch.no_grad():
        text = dual.encode_text(batch["input_ids"], batch["attention_mask"])
    dual.encode_image = lambda pixels: text[: len(pixels)]  # each caption's own embedding as its frame's
    top1, candidates = retrieval_top1(dual, batch["vit_pixels"], batch["input_ids"], batch["attention_mask"], shows,
                                      candidates=64)
    assert (top1, candidates) == (1.0, 5)


def test_export_reloads_bit_identical(dual, tiny, tokenizer, tmp_path):
    export_dual_encoder(dual, tiny, str(tmp_path), tokenizer)
    loaded, loaded_tokenizer = load_dual_encoder(str(tmp_path))
    batch = pairs(tiny, tokenizer, 2)
    assert torch.equal(loaded.encode_image(batch["vit_pixels"]), dual.eval().encode_image(batch["vit_pixels"]))
    assert torch.equal(loaded.encode_text(batch["input_ids"], batch["attention_mask"]),
                       dual.encode_text(batch["input_ids"], batch["attention_mask"]))
    assert len(loaded_tokenizer) == len(tokenizer)


def test_a_text_encoder_for_another_vocabulary_is_refused(dual, tiny, tokenizer, tmp_path):
    export_dual_encoder(DualEncoder(build_vit(tiny), TextEncoder(tiny, len(tokenizer) + 1)), tiny, str(tmp_path),
                        tokenizer)
    with pytest.raises(WeightsError, match="tokens"):
        load_dual_encoder(str(tmp_path))


def test_presets_without_a_text_tower_say_so(paper):
    with pytest.raises(ValueError, match="model.text_tower is not set"):
        require_text_tower(paper)
