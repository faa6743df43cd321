"""The frozen "pretrained" parts every stage starts from, as one folder on object storage.

The paper preset's bases are released checkpoints a user points ``model.*.weights`` at. The
tiny preset has none, so it makes them: a byte-level tokenizer trained on toy-world captions,
a ViT and a VAE pretrained on toy-world frames and an LLM on its stories as text
(``seedstory.training.bases``; the ViT with its text tower, kept as this world's CLIP), and an
initial UNet, which the stages train. ``write_tiny_base`` writes such a folder, from pretrained parts or, for tests that need
only shapes, random ones; ``base.json`` goes last, so its presence means the folder is complete.
``with_base_weights`` then points a config at that folder, so all stages load the very same
frozen ViT and VAE.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.config.model import ModelConfig
from seedstory.data.toyworld.generate import toy_story
from seedstory.models.detokenizer import build_unet, build_vae
from seedstory.models.dual_encoder import TEXT_ENCODER, TOKENIZER, VIT_FILE, TextEncoder, export_text_encoder
from seedstory.models.export import export_llm, export_vae, export_vit
from seedstory.models.mllm import build_llm
from seedstory.models.vit import VisionTransformer, build_vit
from seedstory.tokenizer import INST, build_tiny_tokenizer

MANIFEST = "base.json"
PARTS = {"vit": VIT_FILE, "llm": "llm", "tokenizer": TOKENIZER, "vae": "vae", "unet": "unet",
         "text_encoder": TEXT_ENCODER}
SHAPES = {"image_tokens", "sd_image_size", "vit", "llm", "vae", "unet", "text_tower"}


class BaseWeightsError(RuntimeError):
    """The base-weights folder a config names is missing or was made for other shapes."""


@dataclass
class PretrainedBases:
    """The parts ``seedstory.training.bases`` trained, what they scored and which runs made them."""

    tokenizer: PreTrainedTokenizerBase
    vit: VisionTransformer
    text_encoder: TextEncoder
    vae: AutoencoderKL
    llm: LlamaForCausalLM
    evaluation: dict[str, float] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)


def read_manifest(uri: str) -> dict | None:
    fs, path = storage.filesystem_for(storage.join(uri, MANIFEST))
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def tiny_model(config: SeedStoryConfig) -> ModelConfig:
    """The tiny model config with every weight location unset (the base folder is where they will be)."""
    if config.model.preset != "tiny":
        raise BaseWeightsError(f"the {config.model.preset!r} preset's base weights are released checkpoints: "
                               "point model.*.weights and model.llm.tokenizer at them instead")
    return config.model.without_weights("vit", "llm", "unet", "vae")


def base_shapes(config: SeedStoryConfig) -> dict:
    """The model shapes a base folder is made for (the VAE's latent scale is measured, not a shape)."""
    shapes = tiny_model(config).model_dump(mode="json", include=SHAPES)
    shapes["vae"].pop("scaling_factor")
    return shapes


def check_base_shapes(existing: dict, config: SeedStoryConfig, uri: str) -> None:
    """Refuse a base folder made for other shapes, or before its VAE's latent scale was measured."""
    if "scaling_factor" in existing["model"].get("vae", {}):
        raise BaseWeightsError(f"{uri} was written before the VAE's latent scale was measured (its manifest fixes "
                               "vae.scaling_factor); pretrain the bases again with --overwrite")
    if existing["model"] != base_shapes(config):
        raise BaseWeightsError(f"{uri} holds base weights for other model shapes; choose another "
                               "train.base_weights or pass --overwrite")


def tiny_tokenizer(config: SeedStoryConfig) -> PreTrainedTokenizerBase:
    """A byte-level BPE trained on the toy world's captions (all splits: the world's language, not its stories)."""
    captions = [c for index in range(config.data.toy.stories) for c in toy_story(config.data.toy, index).record.captions]
    return build_tiny_tokenizer([*captions, INST], config.model.llm.vocab_size, config.model.image_tokens)


def write_tiny_base(config: SeedStoryConfig, uri: str, seed: int = 0, overwrite: bool = False,
                    pretrained: PretrainedBases | None = None) -> dict:
    """Write the base parts under ``uri`` unless a manifest for the same shapes is already there.

    Without ``pretrained``, every part is random (seeded): the shapes-only fast path for tests.
    """
    model, shapes = tiny_model(config), base_shapes(config)
    existing = read_manifest(uri)
    if existing is not None and not overwrite:
        check_base_shapes(existing, config, uri)
        return existing
    torch.manual_seed(seed)
    tokenizer = pretrained.tokenizer if pretrained else tiny_tokenizer(config)
    with tempfile.TemporaryDirectory(prefix="seedstory-base-") as staging:
        folder = Path(staging)
        export_vit(pretrained.vit if pretrained else build_vit(model), str(folder / PARTS["vit"]))
        export_llm(pretrained.llm if pretrained else build_llm(model, vocab_size=len(tokenizer)), str(folder / PARTS["llm"]))
        tokenizer.save_pretrained(folder / PARTS["tokenizer"])
        export_vae(pretrained.vae if pretrained else build_vae(model), str(folder / PARTS["vae"]))
        build_unet(model).save_pretrained(folder / PARTS["unet"])
        parts = dict(PARTS)
        if model.text_tower is not None:
            text = pretrained.text_encoder if pretrained else TextEncoder(model, len(tokenizer))
            export_text_encoder(text, model, str(folder / PARTS["text_encoder"]))
        else:
            del parts["text_encoder"]
        manifest = {"model": shapes, "seed": seed, "vocab_size": len(tokenizer),
                    "parts": {name: storage.join(uri, part) for name, part in parts.items()}}
        if pretrained:
            manifest["pretrained"] = {"evaluation": pretrained.evaluation, "runs": pretrained.runs}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        storage.upload_folder(folder, uri, manifest=MANIFEST)
    return manifest


def with_base_weights(config: SeedStoryConfig) -> SeedStoryConfig:
    """A copy of ``config`` whose null weight and tokenizer locations point into ``train.base_weights``."""
    base = config.train.base_weights
    if base is None:
        return config
    if read_manifest(base) is None:
        raise BaseWeightsError(f"no base weights at {base} ({MANIFEST} missing): run "
                               f"`python jobs/pretrain_bases.py --config <same config>` first")
    resolved = config.model_copy(deep=True)
    model = resolved.model
    for section, field_name, part in (("vit", "weights", "vit"), ("llm", "weights", "llm"),
                                      ("llm", "tokenizer", "tokenizer"), ("vae", "weights", "vae"),
                                      ("unet", "weights", "unet")):
        if getattr(getattr(model, section), field_name) is None:
            setattr(getattr(model, section), field_name, storage.join(base, PARTS[part]))
    return resolved
