"""The extractors: the toy pair from a base folder, a user's CLIP folder, InceptionV3 only from a named file."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from seedstory.config import load_config
from seedstory.eval.extractors import as_uint8, build_extractors
from seedstory.training.base_weights import write_tiny_base


def write_clip_folder(folder) -> None:
    """A random CLIP with a character-level vocabulary: a CLIP folder as transformers saves one."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**layers, "vocab_size": len(vocab), "max_position_embeddings": 32,
                                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={**layers, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)


def test_the_toy_pair_comes_from_the_base_folder_and_names_its_weights(tmp_path, held_out):
    config = load_config("tiny", [f"train.base_weights={tmp_path / 'base'}"])
    write_tiny_base(config, config.train.base_weights)
    extractor, pair = build_extractors(config)
    features = extractor(as_uint8(held_out.frames[:5]))
    assert features.shape == (5, extractor.num_features) == (5, config.model.text_tower.embed_dim)
    assert extractor.identity() == {"name": "toy", "digest": extractor.digest, "features": 64}
    assert pair.embed_texts(held_out.captions[:5]).shape == (5, 64) and pair.name == "toy"
    assert torch.allclose(pair.embed_images(as_uint8(held_out.frames[:5])), features)

    write_tiny_base(config, config.train.base_weights, seed=1, overwrite=True)
    assert build_extractors(config)[0].digest != extractor.digest


def test_a_clip_folder_serves_both_sides_from_local_files(tmp_path, held_out):
    write_clip_folder(tmp_path / "clip")
    config = load_config("tiny", ["eval.extractor=clip", "eval.clip=clip", f"eval.clip_model={tmp_path / 'clip'}"])
    extractor, pair = build_extractors(config)
    images = pair.embed_images(as_uint8(held_out.frames[:3]))
    assert extractor(as_uint8(held_out.frames[:3])).shape == images.shape == (3, 16)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert pair.embed_texts(["a red ball", "night"]).shape == (2, 16)
    assert extractor.name == "clip" and extractor.digest == pair.digest


def test_missing_weights_are_named_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.inception_weights and eval.clip_model not set"):
        build_extractors(load_config("paper"))
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(FileNotFoundError, match=f"eval.inception_weights: {missing} does not exist"):
        build_extractors(load_config("tiny", ["eval.extractor=inception", f"eval.inception_weights={missing}"]))
    with pytest.raises(FileNotFoundError, match="eval.clip_model: .*clip does not exist"):
        build_extractors(load_config("tiny", ["eval.extractor=clip", "eval.clip=clip", f"eval.clip_model={tmp_path / 'clip'}"]))


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed here")
def test_inception_without_torch_fidelity_says_what_it_needs(tmp_path):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"not read")
    with pytest.raises(RuntimeError, match="needs torch-fidelity"):
        build_extractors(load_config("tiny", ["eval.extractor=inception", f"eval.inception_weights={weights}"]))
