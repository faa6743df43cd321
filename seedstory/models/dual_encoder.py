"""A CLIP-style dual encoder whose image tower is the ViT: how the tiny preset pretrains its ViT.

Qwen-VL's ViT starts from a CLIP image tower; the tiny preset's equivalent learns from toy-world
frames and their captions with CLIP's symmetric contrastive loss. The image side mean-pools the
ViT's [B, num_queries, output_dim] features, the text side (a small pre-LN transformer over the
project tokenizer's ids) mean-pools its token states; each is projected into a joint embedding.
After pretraining the ViT is frozen for SEED-Story, and the pair stays this world's CLIP for
evaluation.

A folder holding a dual encoder (the tiny base folder, a ``clip_pretrain`` export) has
``vit.safetensors`` (Qwen-VL names), ``text_encoder/`` (text tower, both projections, the logit
scale, ``seedstory.json``) and ``tokenizer/``; ``load_dual_encoder`` reads it back strictly.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config.model import ModelConfig, TextTowerConfig
from seedstory.models.export import export_vit
from seedstory.models.vit import VisionTransformer, build_vit
from seedstory.models.weights import WeightsError, load_module_tensors, load_tokenizer, local_copy, read_tensors

VIT_FILE = "vit.safetensors"
TEXT_ENCODER = "text_encoder"
TOKENIZER = "tokenizer"
TENSORS = "model.safetensors"
MANIFEST = "seedstory.json"
MAX_LOGIT_SCALE = math.log(100.0)


class TextTower(nn.Module):
    """[B, L] token ids + attention mask -> [B, width]: the mean of the final token states."""

    def __init__(self, config: TextTowerConfig, vocab_size: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, config.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(config.max_length, config.width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.width, config.heads, int(config.width * config.mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.layers)
        )
        self.ln_final = nn.LayerNorm(config.width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.positional_embedding.shape[0]:
            raise ValueError(f"{length} tokens exceed the text tower's max_length {self.positional_embedding.shape[0]}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        padding = attention_mask == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        x = self.ln_final(x)
        keep = attention_mask.unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


class TextEncoder(nn.Module):
    """What CLIP adds to the ViT: the text tower, both towers' projections into the joint space, the logit scale."""

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        tower = require_text_tower(config)
        self.tower = TextTower(tower, vocab_size)
        self.text_projection = nn.Linear(tower.width, tower.embed_dim, bias=False)
        self.image_projection = nn.Linear(config.vit.output_dim, tower.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))  # 1-D: DeepSpeed broadcasts no 0-D


class DualEncoder(nn.Module):
    def __init__(self, vit: VisionTransformer, text: TextEncoder) -> None:
        super().__init__()
        self.vit = vit
        self.text = text

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised ViT pixels [B, 3, S, S] -> unit embeddings [B, embed_dim]."""
        return F.normalize(self.text.image_projection(self.vit(pixels).mean(dim=1)).float(), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> unit embeddings [B, embed_dim]."""
        return F.normalize(self.text.text_projection(self.text.tower(input_ids, attention_mask)).float(), dim=-1)

    def similarity(self, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """[T, I] scaled cosine similarities (CLIP's logits) of unit text and image embeddings."""
        return self.text.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().float() * text @ images.T

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CLIP's symmetric cross-entropy over the batch; caption i belongs to frame i."""
        logits = self.similarity(self.encode_text(batch["input_ids"], batch["attention_mask"]),
                                 self.encode_image(batch["vit_pixels"]))
        targets = torch.arange(logits.shape[0], device=logits.device)
        contrastive = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        top1 = (logits.argmax(dim=1) == targets).float().mean()
        return {"loss": contrastive, "contrastive": contrastive, "batch_top1": top1.detach(),
                "logit_scale": self.text.logit_scale.detach().exp().reshape(())}


def require_text_tower(config: ModelConfig) -> TextTowerConfig:
    if config.text_tower is None:
        raise ValueError(f"model.text_tower is not set: the {config.preset!r} preset has no dual encoder "
                         "(only presets that pretrain their own ViT do)")
    return config.text_tower


def build_dual_encoder(config: ModelConfig, vocab_size: int) -> DualEncoder:
    """ViT as ``build_vit`` makes it (random, or ``vit.weights``) + a random text encoder."""
    return DualEncoder(build_vit(config), TextEncoder(config, vocab_size))


@torch.no_grad()
def retrieval_top1(model: DualEncoder, vit_pixels: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, shows: Sequence[Hashable], candidates: int = 64,
                   seed: int = 0) -> tuple[float, int]:
    """Caption -> frame retrieval: the share of captions whose most similar frame is their own, each among
    its frame and ``candidates - 1`` others drawn at random (seeded), and the number of candidates used.

    ``shows[i]`` is what frame i shows: frames that show the same thing are the same picture, so only
    the first of each enters the evaluation. Fewer distinct frames than ``candidates`` use them all.
    """
    first: dict[Hashable, int] = {}
    for index, key in enumerate(shows):
        first.setdefault(key, index)
    keep = list(first.values())
    text = model.encode_text(input_ids[keep], attention_mask[keep])
    images = model.encode_image(vit_pixels[keep])
    similarity = model.similarity(text, images)
    count = min(candidates, len(keep))
    rng = np.random.default_rng(seed)
    hits = 0
    for query in range(len(keep)):
        others = rng.choice(np.delete(np.arange(len(keep)), query), size=count - 1, replace=False)
        hits += int(similarity[query, others].max() < similarity[query, query])
    return hits / len(keep), count


def export_text_encoder(text: TextEncoder, config: ModelConfig, uri: str) -> None:
    """``uri``/model.safetensors + seedstory.json (the model config and vocabulary size)."""
    manifest = {"component": TEXT_ENCODER, "model": config.model_dump(mode="json"),
                "vocab_size": text.tower.token_embedding.num_embeddings}
    with tempfile.TemporaryDirectory(prefix="seedstory-text-encoder-") as staging:
        folder = Path(staging)
        save_file({name: t.detach().contiguous() for name, t in text.state_dict().items()}, str(folder / TENSORS))
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        storage.upload_folder(folder, uri, manifest=MANIFEST)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, uri: str) -> None:
    with tempfile.TemporaryDirectory(prefix="seedstory-tokenizer-") as staging:
        tokenizer.save_pretrained(staging)
        storage.upload_folder(Path(staging), uri)


def export_dual_encoder(model: DualEncoder, config: ModelConfig, uri: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """The folder layout ``load_dual_encoder`` reads."""
    export_vit(model.vit, storage.join(uri, VIT_FILE))
    export_text_encoder(model.text, config, storage.join(uri, TEXT_ENCODER))
    save_tokenizer(tokenizer, storage.join(uri, TOKENIZER))


def load_dual_encoder(uri: str) -> tuple[DualEncoder, PreTrainedTokenizerBase]:
    """This world's CLIP from a folder with vit.safetensors, text_encoder/ and tokenizer/ (e.g. the tiny base)."""
    folder = local_copy(storage.join(uri, TEXT_ENCODER))
    if not (folder / MANIFEST).is_file():
        raise WeightsError(f"{uri}/{TEXT_ENCODER}: no {MANIFEST}, so not a seedstory text encoder")
    manifest = json.loads((folder / MANIFEST).read_text())
    config = ModelConfig.model_validate(manifest["model"])
    config = config.model_copy(update={"vit": config.vit.model_copy(update={"weights": storage.join(uri, VIT_FILE)})})
    with torch.device("meta"):
        text = TextEncoder(config, manifest["vocab_size"])
    load_module_tensors(text, read_tensors(folder / TENSORS), str(folder / TENSORS), torch.float32)
    tokenizer = load_tokenizer(storage.join(uri, TOKENIZER), config.image_tokens)
    if len(tokenizer) != manifest["vocab_size"]:
        raise WeightsError(f"{uri}: the tokenizer has {len(tokenizer)} tokens, the text encoder "
                           f"{manifest['vocab_size']} rows")
    return DualEncoder(build_vit(config), text).eval(), tokenizer
