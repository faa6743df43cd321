"""The three stage jobs' recipes in-process on the tiny preset: inputs, trainable sets, learning, exports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from ray import cloudpickle

from jobs.detokenizer_adapt import DetokenizerAdapt
from jobs.detokenizer_pretrain import DetokenizerPretrain
from jobs.story_instruct import StoryInstruct
from seedstory.config import load_config
from seedstory.config.train import StageConfig
from seedstory.data.images import decode_image, encode_image
from seedstory.data.samples import WindowSampler, stage1_samples
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.render import render_frame
from seedstory.data.stage_collate import target_images
from seedstory.models.export import load_detokenizer, load_mllm, load_mllm_vit
from seedstory.training.base_recipes import ClipPretrain, LLMPretrain, VAEPretrain
from seedstory.training.recipe import feed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def config(tiny_base_config):
    return tiny_base_config


@pytest.fixture(scope="module")
def frames(config) -> tuple[list[str], list[Image.Image]]:
    story = toy_story(config.data.toy, 0)
    images = [decode_image(encode_image(render_frame(state, config.data.toy.image_size), ".jpg"))
              for state in story.states]
    return list(story.record.captions), images


def windows(config, frames, sd_size: int | None) -> dict[str, list]:
    captions, images = frames
    sampler = WindowSampler(StoryInstruct.tokenizer(config, {}), config.model.image_tokens, config.model.vit.image_size,
                            config.data.window_frames, 1, config.data.max_length, 0, sd_size)
    samples = list(sampler.samples("story-0", captions, images))
    return {name: [sample[name] for sample in samples] for name in samples[0]}


def train(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    """Steps of AdamW on one batch with the noise and timesteps fixed, so the objective is too."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)
        terms = model(batch)
        terms["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(terms["loss"].detach()))
    return losses


def inputs(recipe, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return feed(recipe.frozen(), batch)


def trainable(model: torch.nn.Module) -> set[str]:
    return {name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}


def test_every_recipe_trains_one_configured_stage_of_its_own(config):
    recipes = (VAEPretrain, ClipPretrain, LLMPretrain, DetokenizerPretrain, StoryInstruct, DetokenizerAdapt)
    stages = {name for name, value in config.train if isinstance(value, StageConfig)}
    assert sorted(recipe.STAGE for recipe in recipes) == sorted(stages)


def test_the_jobs_recipes_travel_to_workers_that_cannot_import_the_jobs(config, stage3_sources, tmp_path):
    """Submitted, a job is ``__main__`` and Ray pickles its recipe class by value (registered so here): a
    process that has only the installed package builds the same trained module from it."""
    recipes = (DetokenizerPretrain, StoryInstruct, DetokenizerAdapt)
    jobs = [sys.modules[recipe.__module__] for recipe in recipes]
    for job in jobs:
        cloudpickle.register_pickle_by_value(job)
    try:
        (tmp_path / "recipes.pkl").write_bytes(cloudpickle.dumps(
            [(recipe, config, stage3_sources if recipe.SOURCES else {}) for recipe in recipes]))
    finally:
        for job in jobs:
            cloudpickle.unregister_pickle_by_value(job)
    worker = (
        "import json, sys\n"
        "from ray import cloudpickle\n"
        "recipes = cloudpickle.loads(open('recipes.pkl', 'rb').read())\n"
        "assert 'jobs' not in sys.modules\n"
        "built = {r.STAGE: sorted(r(c, s).build().state_dict()) for r, c, s in recipes}\n"
        "print(json.dumps(built))\n")
    done = subprocess.run([sys.executable, "-c", worker], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout.splitlines()[-1])
    for recipe in recipes:
        sources = stage3_sources if recipe.SOURCES else {}
        assert built[recipe.STAGE] == sorted(recipe(config, sources).build().state_dict()), recipe.STAGE


def test_inputs_are_checked_before_any_worker_starts(config):
    with pytest.raises(ValueError, match=r"missing \['detokenizer'\]"):
        DetokenizerAdapt.check_inputs(config, {"mllm": "s3://b/mllm"})
    with pytest.raises(ValueError, match=r"not understood \['mllm'\]"):
        DetokenizerPretrain.check_inputs(config, {"mllm": "s3://b/mllm"})
    with pytest.raises(ValueError, match="model.vae.weights"):
        DetokenizerPretrain.check_inputs(load_config("tiny"), {})
    partitioned = config.model_copy(deep=True)
    partitioned.train.story_instruct.zero_stage = 3
    with pytest.raises(ValueError, match="zero_stage=3 is not supported"):
        StoryInstruct.check_inputs(partitioned, {})


def test_stage1_trains_adapter_and_unet_and_exports_them(config, frames, tmp_path):
    rows = list(stage1_samples(frames[1][:4], config.model.vit.image_size, config.model.sd_image_size))
    recipe = DetokenizerPretrain(config, {})
    model = recipe.build()
    batch = inputs(recipe, recipe.collate()({name: np.stack([row[name] for row in rows]) for name in rows[0]}))
    assert set(batch) == {"latents", "features", "time_ids"}
    assert trainable(model) == {"detokenizer.adapter", "detokenizer.unet"} and model.detokenizer.vae is None
    losses = train(model, batch, steps=3)
    assert losses[-1] < losses[0], losses
    assert recipe.export(model, str(tmp_path / "detok")) == {"detokenizer": str(tmp_path / "detok")}
    loaded = load_detokenizer(str(tmp_path / "detok")).state_dict()
    for name, tensor in model.detokenizer.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_stage2_trains_the_adapter_and_resamplers_on_text_and_image_terms(config, frames, tmp_path):
    recipe = StoryInstruct(config, {})
    model = recipe.build()
    batch = inputs(recipe, recipe.collate()(windows(config, frames, sd_size=None)))
    assert trainable(model) == {"mllm.llm", "mllm.input_resampler", "mllm.output_resampler"}
    assert not any(p.requires_grad for name, p in model.mllm.llm.named_parameters() if "base_layer" in name)
    terms = model(batch)
    assert set(terms) == {"loss", "text_ce", "image_cosine"}
    losses = train(model, batch, steps=3)
    assert losses[-1] < losses[0], losses
    recipe.export(model, str(tmp_path / "mllm"))
    loaded, tokenizer = load_mllm(str(tmp_path / "mllm"))
    assert len(tokenizer) == loaded.layout.vocab_size
    model.eval()
    with torch.no_grad():
        args = dict(input_ids=batch["input_ids"], image_features=batch["image_features"],
                    is_target=target_images(batch["num_images"]))
        assert torch.equal(model.mllm(**args).regressed, loaded(**args).regressed)


@pytest.fixture(scope="module")
def stage3_sources(config, tmp_path_factory) -> dict[str, str]:
    """Stage 1's export, untrained, and stage 2's with its LoRA factors drawn as a trained adapter's are
    (not zero, so merging it changes the weights)."""
    root = tmp_path_factory.mktemp("stage3-sources")
    first, second = DetokenizerPretrain(config, {}), StoryInstruct(config, {})
    first.export(first.build(), str(root / "detok"))
    mllm = second.build()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in mllm.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    second.export(mllm, str(root / "mllm"))
    return {"mllm": str(root / "mllm"), "detokenizer": str(root / "detok")}


def test_stage3_adapts_the_stage1_detokenizer_to_the_stage2_mllm(config, frames, stage3_sources, tmp_path):
    recipe = DetokenizerAdapt(config, stage3_sources)
    model = recipe.build()
    assert trainable(model) == {"detokenizer.adapter", "detokenizer.unet"} and model.detokenizer.vae is None
    windows_batch = recipe.collate()(windows(config, frames, sd_size=config.model.sd_image_size))
    assert windows_batch["sd_pixels"].shape[0] == windows_batch["num_images"].shape[0]
    batch = inputs(recipe, windows_batch)
    assert batch["latents"].shape[0] == batch["features"].shape[0] == windows_batch["num_images"].shape[0]
    losses = train(model, batch, steps=3)
    assert losses[-1] < losses[0], losses
    recipe.export(model, str(tmp_path / "adapted"))
    adapted = load_detokenizer(str(tmp_path / "adapted"))
    assert torch.equal(adapted.unet.conv_in.weight, model.detokenizer.unet.conv_in.weight)


def test_stage3_conditions_on_the_stage2_mllm_with_its_lora_merged_as_stories_run_it(config, frames, stage3_sources):
    recipe = DetokenizerAdapt(config, stage3_sources)
    conditioning = recipe.frozen()
    assert not isinstance(conditioning.mllm.llm, PeftModel)
    batch = recipe.collate()(windows(config, frames, sd_size=config.model.sd_image_size))
    merged = feed(conditioning, batch)["features"]
    unmerged, _ = load_mllm(stage3_sources["mllm"])
    assert isinstance(unmerged.llm, PeftModel)
    with torch.no_grad():
        arguments = {"input_ids": batch["input_ids"], "image_features": conditioning.vit(batch["vit_pixels"]),
                     "is_target": target_images(batch["num_images"])}
        adapted = unmerged(**arguments).regressed
        with unmerged.llm.disable_adapter():
            base = unmerged(**arguments).regressed
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)
    assert (base - adapted).abs().max() > 1e-2  # the adapter matters to the features


def test_stage3_reads_frames_with_the_vit_the_mllm_was_trained_with(config, stage3_sources):
    elsewhere = config.model_copy(deep=True)
    elsewhere.model.vit.weights = "/nowhere/vit"  # today's config may name another ViT, or none on this machine
    vit = DetokenizerAdapt(elsewhere, stage3_sources).frozen().vit
    expected = load_mllm_vit(stage3_sources["mllm"]).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in vit.state_dict().items())


def _checkpointed_block(model: torch.nn.Module) -> torch.nn.Module:
    """A block that runs twice per step when its activations are recomputed in the backward pass."""
    if hasattr(model, "detokenizer"):
        return model.detokenizer.unet.down_blocks[0].resnets[0]
    return model.mllm.llm.get_base_model().model.layers[0].mlp  # the layer checkpoints its forward, not its hooks


@pytest.mark.parametrize("stage", ["detokenizer_pretrain", "story_instruct", "detokenizer_adapt"])
def test_activation_checkpointing_recomputes_the_trained_network_and_changes_no_gradient(
        config, frames, stage3_sources, stage):
    recipe = {"detokenizer_pretrain": DetokenizerPretrain, "story_instruct": StoryInstruct,
              "detokenizer_adapt": DetokenizerAdapt}[stage]
    sources = stage3_sources if stage == "detokenizer_adapt" else {}
    if stage == "detokenizer_pretrain":
        rows = list(stage1_samples(frames[1][:2], config.model.vit.image_size, config.model.sd_image_size))
        samples = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    else:
        samples = windows(config, frames, sd_size=config.model.sd_image_size if stage == "detokenizer_adapt" else None)
    results = []
    for enabled in (False, True):
        settings = config.model_copy(deep=True)
        getattr(settings.train, stage).activation_checkpointing = enabled
        torch.manual_seed(0)
        built = recipe(settings, sources)
        model = built.build()
        calls = []
        _checkpointed_block(model).register_forward_pre_hook(lambda *_: calls.append(1))  # a recompute may stop early
        torch.manual_seed(1)
        terms = model(inputs(built, built.collate()(samples)))
        terms["loss"].backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results.append((float(terms["loss"].detach()), grads, len(calls)))
    (plain_loss, plain_grads, plain_calls), (loss, grads, calls) = results
    assert (plain_calls, calls) == (1, 2), "the checkpointed block runs again in the backward pass"
    assert loss == plain_loss and grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=0, atol=1e-6, msg=name)
