"""The tiny bases' recipes in-process: the VAE learns to reconstruct toy frames, inputs and exports are checked."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from seedstory.config import load_config
from seedstory.data.images import decode_image, encode_image
from seedstory.data.pixels import sd_target
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.render import render_frame
from seedstory.models.detokenizer import build_vae
from seedstory.models.export import MANIFEST
from seedstory.data.story_text import story_text_ids
from seedstory.models.dual_encoder import save_tokenizer
from seedstory.models.mllm import build_llm
from seedstory.training.base_eval import (
    next_caption_validity, text_scores, vae_coherence, verdicts, write_next_caption,
)
from seedstory.training.base_weights import tiny_tokenizer
from seedstory.training.base_recipes import ClipPretrain, LLMPretrain, VAEPretrain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def config():
    return load_config("tiny", ["data.toy.stories=2"])


@pytest.fixture(scope="module")
def frames(config) -> tuple[np.ndarray, list[str]]:
    story = toy_story(config.data.toy, 0)
    images = [decode_image(encode_image(render_frame(s, config.data.toy.image_size), ".jpg")) for s in story.states]
    return np.stack([sd_target(image, config.model.sd_image_size)[0] for image in images[:4]]), list(story.record.captions[:4])


def test_the_vae_loss_falls_on_toy_frames(config, frames):
    torch.manual_seed(0)
    model = VAEPretrain(config, {}).build()
    batch = {"sd_pixels": torch.from_numpy(frames[0])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        terms = model(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert set(terms) == {"loss", "reconstruction_error", "kl", "posterior_std"}
    assert losses[-1] < 0.7 * losses[0]


def test_an_untrained_vae_fails_the_round_trip_target(config, frames):
    torch.manual_seed(0)
    score = vae_coherence(build_vae(config.model), *frames)
    assert score < 0.5
    assert verdicts({"val/vae_coherence": score})[0].startswith("MISS")


def test_the_vae_export_is_a_diffusers_folder_marked_complete(config, tmp_path):
    recipe = VAEPretrain(config, {})
    recipe.export(recipe.build(), str(tmp_path / "vae"))
    assert (tmp_path / "vae" / "config.json").is_file() and (tmp_path / "vae" / MANIFEST).is_file()
    model = config.model.model_copy(update={"vae": config.model.vae.model_copy(update={"weights": str(tmp_path / "vae")})})
    build_vae(model)


def test_the_clip_stage_needs_the_tokenizer_it_trains_on(config):
    with pytest.raises(ValueError, match=r"missing \['tokenizer'\]"):
        ClipPretrain.check_inputs(config, {})


@pytest.fixture(scope="module")
def llm_recipe(config, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    save_tokenizer(tiny_tokenizer(config), folder)
    return LLMPretrain(config, {"tokenizer": folder})


def _fit(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model.train()(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_the_llm_learns_a_story_and_its_export_reloads_as_trained(config, llm_recipe, tmp_path):
    torch.manual_seed(0)
    tokenizer = llm_recipe.text_tokenizer
    texts = [story_text_ids(tokenizer, toy_story(config.data.toy, index).record.captions, 256) for index in range(2)]
    model = llm_recipe.build()
    before = text_scores(model.llm, texts)
    batch = llm_recipe.collate()({"input_ids": np.array(texts, dtype=object)})
    _fit(model, batch, steps=20)
    after = text_scores(model.llm, texts)
    assert after["val/llm_loss"] < 0.7 * before["val/llm_loss"]
    assert after["val/llm_next_token_accuracy"] > before["val/llm_next_token_accuracy"]

    llm_recipe.export(model, str(tmp_path / "llm"))
    assert (tmp_path / "llm" / MANIFEST).is_file()
    stored = config.model.model_copy(update={"llm": config.model.llm.model_copy(update={"weights": str(tmp_path / "llm")})})
    assert text_scores(build_llm(stored, len(tokenizer)), texts) == pytest.approx(after)


def test_caption_validity_judges_each_next_caption_against_the_true_previous_frame(config):
    stories = [toy_story(config.data.toy, index).record.captions[:4] for index in range(2)]
    truth = {story[:index]: story[index] for story in stories for index in range(1, len(story))}
    assert next_caption_validity(stories, lambda before: truth[tuple(before)]) == 1.0
    assert next_caption_validity(stories, lambda before: before[-1]) == 0.0  # nothing changed: no event
    with pytest.raises(ValueError, match="no story has a second caption"):
        next_caption_validity([stories[0][:1]], lambda before: before[-1])


def test_an_llm_that_learned_a_story_writes_its_next_captions(config, llm_recipe):
    torch.manual_seed(0)
    tokenizer = llm_recipe.text_tokenizer
    story = toy_story(config.data.toy, 0).record.captions[:4]
    model = llm_recipe.build()
    write = partial(write_next_caption, model.llm, tokenizer)
    assert next_caption_validity([story], write) == 0.0
    batch = llm_recipe.collate()({"input_ids": np.array([story_text_ids(tokenizer, story, 256)], dtype=object)})
    _fit(model, batch, steps=150)
    assert [write(story[:index]) for index in range(1, 4)] == list(story[1:])
    assert next_caption_validity([story], write) == 1.0
