"""The frozen "pretrained" parts every stage starts from, as one folder on object storage.

The paper preset's bases are released checkpoints a user points ``model.*.weights`` at. The
tiny preset has none, so ``write_tiny_base`` makes them once, seeded: a byte-level tokenizer
trained on toy-world captions, a random ViT, LLM, VAE and initial UNet, each saved in its
ecosystem's format. ``with_base_weights`` then points a config at that folder, so all three
stages load the very same frozen ViT and VAE.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.data.toyworld.generate import toy_story
from seedstory.models.detokenizer import build_unet, build_vae
from seedstory.models.export import export_llm, export_vae, export_vit
from seedstory.models.mllm import build_llm
from seedstory.models.vit import build_vit
from seedstory.tokenizer import INST, build_tiny_tokenizer

MANIFEST = "base.json"
PARTS = {"vit": "vit.safetensors", "llm": "llm", "tokenizer": "tokenizer", "vae": "vae", "unet": "unet"}


class BaseWeightsError(RuntimeError):
    """The base-weights folder a config names is missing or was made for other shapes."""


def read_manifest(uri: str) -> dict | None:
    fs, path = storage.filesystem_for(storage.join(uri, MANIFEST))
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def write_tiny_base(config: SeedStoryConfig, uri: str, seed: int = 0, overwrite: bool = False) -> dict:
    """Write the base parts under ``uri`` unless a manifest for the same shapes is already there."""
    if config.model.preset != "tiny":
        raise BaseWeightsError(f"the {config.model.preset!r} preset's base weights are released checkpoints: "
                               "point model.*.weights and model.llm.tokenizer at them instead")
    model = config.model.model_copy(update={"vit": config.model.vit.model_copy(update={"weights": None}),
                                            "llm": config.model.llm.model_copy(update={"weights": None}),
                                            "unet": config.model.unet.model_copy(update={"weights": None}),
                                            "vae": config.model.vae.model_copy(update={"weights": None})})
    shapes = model.model_dump(mode="json", include={"image_tokens", "sd_image_size", "vit", "llm", "vae", "unet"})
    existing = read_manifest(uri)
    if existing is not None and not overwrite:
        if existing["model"] != shapes:
            raise BaseWeightsError(f"{uri} holds base weights for other model shapes; choose another "
                                   "train.base_weights or pass --overwrite")
        return existing
    captions = [c for index in range(config.data.toy.stories) for c in toy_story(config.data.toy, index).record.captions]
    tokenizer = build_tiny_tokenizer([*captions, INST], model.llm.vocab_size, model.image_tokens)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="seedstory-base-") as staging:
        folder = Path(staging)
        export_vit(build_vit(model), str(folder / PARTS["vit"]))
        export_llm(build_llm(model, vocab_size=len(tokenizer)), str(folder / PARTS["llm"]))
        tokenizer.save_pretrained(folder / PARTS["tokenizer"])
        export_vae(build_vae(model), str(folder / PARTS["vae"]))
        build_unet(model).save_pretrained(folder / PARTS["unet"])
        manifest = {"model": shapes, "seed": seed, "vocab_size": len(tokenizer),
                    "parts": {name: storage.join(uri, part) for name, part in PARTS.items()}}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        fs, remote = storage.filesystem_for(uri)
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
            target = f"{remote}/{file.relative_to(folder).as_posix()}"
            if not storage.is_remote(uri):
                fs.makedirs(fs._parent(target), exist_ok=True)
            fs.put_file(str(file), target)
        fs.put_file(str(folder / MANIFEST), f"{remote}/{MANIFEST}")  # last: its presence means complete
    return manifest


def with_base_weights(config: SeedStoryConfig) -> SeedStoryConfig:
    """A copy of ``config`` whose null weight and tokenizer locations point into ``train.base_weights``."""
    base = config.train.base_weights
    if base is None:
        return config
    if read_manifest(base) is None:
        raise BaseWeightsError(f"no base weights at {base} ({MANIFEST} missing): run "
                               f"`python jobs/init_base_weights.py --config <same config>` first")
    resolved = config.model_copy(deep=True)
    model = resolved.model
    for section, field, part in (("vit", "weights", "vit"), ("llm", "weights", "llm"), ("llm", "tokenizer", "tokenizer"),
                                 ("vae", "weights", "vae"), ("unet", "weights", "unet")):
        if getattr(getattr(model, section), field) is None:
            setattr(getattr(model, section), field, storage.join(base, PARTS[part]))
    return resolved
