"""The tiny preset's pretrained bases: its equivalent of downloading Qwen-VL and SD-XL's VAE.

``pretrain_bases`` decodes the toy world's train split once (frames + captions, Ray Data) and
trains on it, each as a Ray Train stage with its own MLflow run and model version:
``vae_pretrain`` (the VAE as an autoencoder, then its latent scale measured), ``clip_pretrain`` (the
ViT as the image tower of a CLIP-style dual encoder) and ``llm_pretrain`` (the LLM on the stories as
text, with the text-only stories of ``data.text_jsonl``). Each is scored on the val split
(``base_eval``) in its run; then the base folder (``train.base_weights``) is written with the
three, an initial UNet, the tokenizer, and the scores in ``base.json``, which goes last.
"""

from __future__ import annotations

from functools import partial

import mlflow
import numpy as np
import ray.data
import torch
from diffusers import AutoencoderKL
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.data.frame_text import frame_text_dataset
from seedstory.data.story_text import (
    mixed_in, story_captions, story_text_dataset, story_text_ids, story_texts, text_corpus,
)
from seedstory.data.streams import EpochStream
from seedstory.models.detokenizer import build_vae, latent_scaling_factor
from seedstory.models.dual_encoder import load_dual_encoder, save_tokenizer
from seedstory.models.mllm import build_llm
from seedstory.training.base_eval import (
    caption_retrieval, next_caption_validity, text_scores, vae_coherence, verdicts, write_next_caption,
)
from seedstory.training.base_weights import (
    PARTS, BaseWeightsError, PretrainedBases, check_base_shapes, read_manifest, tiny_model, tiny_tokenizer,
    write_tiny_base,
)
from seedstory.training.base_recipes import ClipPretrain, LLMPretrain, VAEPretrain
from seedstory.training.run import StageRun, start_stage

RECIPES = (VAEPretrain, ClipPretrain, LLMPretrain)
LATENT_SAMPLE = 512  # train frames the VAE's latent scale is measured on
SCALING_FACTOR = "vae/scaling_factor"


def _columns(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def _trained_vae(config: SeedStoryConfig, uri: str) -> AutoencoderKL:
    model = tiny_model(config)
    return build_vae(model.model_copy(update={"vae": model.vae.model_copy(update={"weights": uri})}))


def _trained_llm(config: SeedStoryConfig, uri: str, vocab_size: int) -> LlamaForCausalLM:
    model = tiny_model(config)
    return build_llm(model.model_copy(update={"llm": model.llm.model_copy(update={"weights": uri})}), vocab_size)


def _evaluate(run: StageRun, val: dict[str, np.ndarray], val_stories: list[tuple[str, ...]], train: ray.data.Dataset,
              tokenizer: PreTrainedTokenizerBase, seed: int) -> dict[str, float]:
    if run.stage == "llm_pretrain":
        data = run.config.data
        llm = _trained_llm(run.config, run.export_uri, len(tokenizer))
        validity = next_caption_validity([captions[:data.window_frames] for captions in val_stories],
                                         partial(write_next_caption, llm, tokenizer))
        return {**text_scores(llm, [story_text_ids(tokenizer, captions, data.max_length) for captions in val_stories]),
                "val/llm_caption_validity": validity}
    captions = [str(caption) for caption in val["caption"]]
    if run.stage == "vae_pretrain":
        vae = _trained_vae(run.config, run.export_uri)
        train_pixels = torch.from_numpy(train.take_batch(LATENT_SAMPLE, batch_format="numpy")["sd_pixels"])
        return {"val/vae_coherence": vae_coherence(vae, val["sd_pixels"], captions),
                SCALING_FACTOR: latent_scaling_factor(vae, train_pixels)}
    dual, _ = load_dual_encoder(run.export_uri)
    top1, candidates = caption_retrieval(dual, val["vit_pixels"], val["input_ids"], val["attention_mask"], captions,
                                         seed)
    return {"val/retrieval_top1": top1, "val/retrieval_candidates": float(candidates)}


def pretrain_bases(config: SeedStoryConfig, seed: int = 0, overwrite: bool = False) -> dict | None:
    """Train, score and write the bases; an existing pretrained folder for the same shapes is kept unless
    ``overwrite``. None when a submission stopped before ``max_steps`` (``stop_at_step``): the base folder
    is left as it was (the stages read their tokenizer from ``staging/`` inside it)."""
    uri = config.train.base_weights
    if uri is None:
        raise BaseWeightsError("train.base_weights is not set: where should the base weights go?")
    existing = read_manifest(uri)
    if existing is not None and "pretrained" in existing and not overwrite:
        check_base_shapes(existing, config, uri)
        print(f"pretrained bases already at {uri} (--overwrite replaces them)")
        return existing

    tokenizer = tiny_tokenizer(config)
    tokenizer_uri = storage.join(uri, "staging", PARTS["tokenizer"])  # the base's own is replaced only at the end
    save_tokenizer(tokenizer, tokenizer_uri)
    stages = config.model_copy(deep=True)
    stages.train.base_weights = None  # the stages make the bases instead of reading them
    stages.train.clip_pretrain.sources = {"tokenizer": tokenizer_uri}
    stages.train.llm_pretrain.sources = {"tokenizer": tokenizer_uri}
    data = config.data
    frames, report = frame_text_dataset(stages, "train", tokenizer)
    val = _columns(frame_text_dataset(stages, "val", tokenizer)[0])
    texts, bad_texts = story_texts(stages, "train", tokenizer)
    corpus, bad_corpus = text_corpus(stages, tokenizer)
    val_stories, _ = story_captions(stages, "val")

    scores: dict[str, float] = {}
    exports: dict[str, str] = {}
    runs: dict[str, str] = {}
    for recipe in RECIPES:
        with start_stage(recipe, stages) as run:
            mlflow.set_tag("seedstory.base_weights", uri)
            if recipe is LLMPretrain:
                run.fit(EpochStream(story_text_dataset(mixed_in(texts, corpus, data.seed), run.config), data.seed,
                                    data.shuffle_buffer, by_length="input_ids", length_groups=data.length_groups))
                mlflow.log_metrics({"data/stories": float(len(texts)), "data/text_stories": float(len(corpus)),
                                    "data/bad_total": float(bad_texts + bad_corpus)})
            else:
                run.fit(EpochStream(frames, data.seed, data.shuffle_buffer))
                run.log_data(report)
            version = run.register()
            if version is not None:
                stage_scores = _evaluate(run, val, val_stories, frames, tokenizer, config.data.seed)
                mlflow.log_metrics(stage_scores)
                run.lines += verdicts(stage_scores)
                scores.update(stage_scores)
                exports[run.stage] = run.export_uri
                runs[run.stage] = f"models:/{version.name}/{version.version}"
        print(run.where_to_look(), flush=True)
        if version is None:
            print(f"{run.stage} stopped before max_steps: no base written to {uri}")
            return None

    dual, _ = load_dual_encoder(exports["clip_pretrain"])
    vae = _trained_vae(config, exports["vae_pretrain"])
    vae.register_to_config(scaling_factor=scores[SCALING_FACTOR])
    llm = _trained_llm(config, exports["llm_pretrain"], len(tokenizer))
    manifest = write_tiny_base(config, uri, seed, overwrite=True, pretrained=PretrainedBases(
        tokenizer=tokenizer, vit=dual.vit, text_encoder=dual.text, vae=vae, llm=llm, evaluation=scores, runs=runs))
    print("\n".join(["", f"base weights:    {uri}", *verdicts(scores)]))
    return manifest
