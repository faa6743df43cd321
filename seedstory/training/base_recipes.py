"""The tiny preset's base recipes, pretrained on the toy world: the VAE, the ViT and the LLM.

The paper's SD-XL VAE and Qwen-VL (ViT and LLM) arrive pretrained; the tiny preset trains its own
once (``seedstory.training.bases`` runs the three and writes the base folder). Every SEED-Story
stage keeps the ViT and VAE frozen; stage 2 adapts the LLM with LoRA.

- ``VAEPretrain``: SD's VAE objective without its perceptual and adversarial terms: reconstruction
  of a latent sampled from the posterior plus a small KL term (``model.loss.vae_kl``), both summed
  per image. Two changes make a short CPU run enough. The reconstruction error is squared and
  weighted up (``model.loss.vae_foreground``) where a pixel differs from its image's median colour:
  the characters are a few percent of a frame's pixels, so a plain per-pixel error is mostly
  background, learnt first and long before the characters' colours. And the posterior's
  log-variance starts at -6 (std 0.05) instead of 0: SD's KL weight barely moves it, so the decoder
  would spend most of the run seeing the latent through unit noise. Batches: ``sd_pixels``
  [B, 3, S, S] in [-1, 1]. Export: a diffusers folder (what ``model.vae.weights`` reads).
- ``ClipPretrain``: the ViT as the image tower of a CLIP-style dual encoder, its text tower over
  the project tokenizer (``sources``: ``tokenizer``). Batches: ``vit_pixels``, ``input_ids``,
  ``attention_mask``. Export: ``vit.safetensors`` (Qwen-VL names), ``text_encoder/``, ``tokenizer/``.
- ``LLMPretrain``: next-token prediction on whole stories as text (``seedstory.data.story_text``).
  Batches: ``input_ids``, ``labels`` (no mask: ``TextCollate``). Export: a transformers folder (what
  ``model.llm.weights`` reads).
"""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.config.model import ModelConfig
from seedstory.data.frame_text import ColumnsCollate
from seedstory.models.detokenizer import build_vae
from seedstory.models.dual_encoder import DualEncoder, TextEncoder, export_dual_encoder
from seedstory.data.story_text import TextCollate
from seedstory.models.export import MANIFEST, export_llm, export_vae
from seedstory.models.mllm import build_llm
from seedstory.models.vit import build_vit
from seedstory.models.weights import load_tokenizer
from seedstory.training.recipe import StageRecipe


def write_export_manifest(uri: str, component: str, model: ModelConfig) -> None:
    """The ``seedstory.json`` that marks an export folder complete (registration checks for it)."""
    manifest = {"component": component, "model": model.model_dump(mode="json")}
    storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=2).encode())


INITIAL_LOGVAR = -6.0
FOREGROUND_DISTANCE = 0.1  # summed |RGB| difference in [-1, 1] units: JPEG noise on a flat colour stays below


def foreground(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] 1.0 where a pixel's colour differs from its image's median colour, else 0.0."""
    median = pixels.flatten(2).median(dim=2).values[:, :, None, None]
    return ((pixels - median).abs().sum(dim=1, keepdim=True) > FOREGROUND_DISTANCE).to(pixels.dtype)


class VAEPretrainModel(nn.Module):
    def __init__(self, vae: AutoencoderKL, kl_weight: float, foreground_weight: float) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight
        self.foreground_weight = foreground_weight

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixels = batch["sd_pixels"].float()
        posterior = self.vae.encode(batch["sd_pixels"]).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample.float()
        weights = 1 + self.foreground_weight * foreground(pixels)
        error = (weights * (reconstruction - pixels).square()).mean() / weights.mean()
        kl = posterior.kl().float().mean() / pixels[0].numel()  # per pixel value, like the error
        return {"loss": error + self.kl_weight * kl, "reconstruction_error": error, "kl": kl,
                "posterior_std": posterior.std.detach().float().mean()}


def near_deterministic(vae: AutoencoderKL) -> AutoencoderKL:
    """Start the posterior's log-variance (the second half of ``quant_conv``'s outputs) at ``INITIAL_LOGVAR``."""
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels:] = INITIAL_LOGVAR
    return vae


class VAEPretrain(StageRecipe):
    STAGE = "vae_pretrain"

    def build(self) -> nn.Module:
        model = self.config.model
        vae = near_deterministic(build_vae(model.without_weights("vae"))).train().requires_grad_(True)
        return VAEPretrainModel(vae, model.loss.vae_kl, model.loss.vae_foreground)

    def collate(self) -> NumpyBatchCollateFn:
        return ColumnsCollate(("sd_pixels",))

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_vae(model.vae, uri)
        write_export_manifest(uri, "vae", self.config.model)
        return {"vae": uri}


class _TokenizerSource(StageRecipe):
    """A base trained on text cut with the tokenizer the bases job trains first (``sources``: ``tokenizer``)."""

    SOURCES = ("tokenizer",)

    @classmethod
    def tokenizer(cls, config: SeedStoryConfig, sources: dict[str, str]) -> PreTrainedTokenizerBase:
        return load_tokenizer(sources["tokenizer"], config.model.image_tokens)


class ClipPretrain(_TokenizerSource):
    STAGE = "clip_pretrain"

    def build(self) -> nn.Module:
        model = self.config.model.without_weights("vit")
        return DualEncoder(build_vit(model).train(), TextEncoder(model, len(self.text_tokenizer))).requires_grad_(True)

    def collate(self) -> NumpyBatchCollateFn:
        return ColumnsCollate(("vit_pixels", "input_ids", "attention_mask"))

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_dual_encoder(model, self.config.model, uri, self.text_tokenizer)
        write_export_manifest(uri, "dual_encoder", self.config.model)
        return {"dual_encoder": uri}


class LLMPretrainModel(nn.Module):
    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self.llm(**batch).loss}


class LLMPretrain(_TokenizerSource):
    STAGE = "llm_pretrain"

    def build(self) -> nn.Module:
        llm = build_llm(self.config.model.without_weights("llm"), vocab_size=len(self.text_tokenizer))
        return LLMPretrainModel(llm.train().requires_grad_(True))

    def collate(self) -> NumpyBatchCollateFn:
        return TextCollate(self.text_tokenizer.pad_token_id)

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_llm(model.llm, uri)
        write_export_manifest(uri, "llm", self.config.model)
        return {"llm": uri}
