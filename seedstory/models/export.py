"""Trained parts saved in each ecosystem's own format, and loaded back strictly.

Base weights (what a stage freezes): ``export_vit`` writes one safetensors file with
Qwen-VL's ``transformer.visual.`` names, ``export_llm`` a transformers folder, ``export_vae``
a diffusers folder; point ``vit.weights`` / ``llm.weights`` / ``vae.weights`` at them. The
paper preset's bases are the released checkpoints; the tiny preset's random bases must be
exported once so that every stage sees the same ones.

Trained parts: an MLLM folder holds ``adapter/`` (a peft LoRA adapter that
``PeftModel.from_pretrained`` reads) or ``llm/`` (a full transformers folder, when no adapter
is attached), ``input_resampler.safetensors``, ``output_resampler.safetensors``,
``tokenizer/`` when given and ``seedstory.json`` (model config and token layout). A
de-tokenizer folder holds ``unet/`` (``UNet2DConditionModel.from_pretrained`` reads it),
``condition_adapter.safetensors`` and ``seedstory.json``; its VAE comes from ``vae.weights``.

Every target may be a local path or an ``s3://`` URI.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config.model import ModelConfig
from seedstory.models.detokenizer import ConditionAdapter, Detokenizer, build_vae, unet_config
from seedstory.models.mllm import (
    SeedStoryMLLM, TokenLayout, build_input_resampler, build_llm, build_output_resampler, llama_config,
)
from seedstory.models.vit import VisionTransformer, build_vit
from seedstory.models.weights import (
    QWEN_VISUAL_PREFIX, WeightsError, check_tensors, load_diffusers_weights, load_llm_weights, load_module_tensors,
    local_copy, read_tensors,
)
from seedstory.storage import filesystem_for, is_remote

MANIFEST = "seedstory.json"
DETOKENIZER_UNET = "unet"
DETOKENIZER_ADAPTER = "condition_adapter.safetensors"


@contextmanager
def _writable(uri: str) -> Iterator[Path]:
    """A local folder to write into, published at ``uri`` with its manifest last.

    A manifest already at ``uri`` is removed before any part is replaced: until the new one lands,
    the folder reads as incomplete, so neither a loader nor the registry takes a half-replaced export.
    """
    if not is_remote(uri):
        storage.remove_file(storage.join(uri, MANIFEST))
        path = Path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="seedstory-export-") as staging:
        yield Path(staging)
        storage.upload_folder(Path(staging), uri, manifest=MANIFEST)


def _save_module(module: nn.Module, path: Path) -> None:
    save_file({name: t.detach().contiguous() for name, t in module.state_dict().items()}, str(path))


def _load_module(module: nn.Module, file: Path) -> nn.Module:
    if not file.is_file():
        raise WeightsError(f"{file.parent}: missing {file.name}")
    return load_module_tensors(module, read_tensors(file), str(file))


def _write_manifest(folder: Path, component: str, config: ModelConfig, **extra: object) -> None:
    manifest = {"component": component, "model": config.model_dump(mode="json"), **extra}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _read_manifest(folder: Path, component: str) -> dict:
    file = folder / MANIFEST
    if not file.is_file():
        raise WeightsError(f"{folder}: no {MANIFEST}, so not a seedstory {component} export")
    manifest = json.loads(file.read_text())
    if manifest.get("component") != component:
        raise WeightsError(f"{folder}: holds a {manifest.get('component')!r} export, not a {component!r} one")
    return manifest


def export_model_config(uri: str, component: str) -> ModelConfig:
    """The model config an export was made with: its shapes and the base weights it depends on."""
    return ModelConfig.model_validate(_read_manifest(local_copy(uri), component)["model"])


def export_vit(vit: VisionTransformer, uri: str) -> None:
    """One safetensors file (``uri`` names the file) with Qwen-VL's tensor names."""
    tensors = {QWEN_VISUAL_PREFIX + name: t.detach().contiguous() for name, t in vit.state_dict().items()}
    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, uri)
        return
    with tempfile.TemporaryDirectory(prefix="seedstory-export-") as staging:
        save_file(tensors, f"{staging}/vit.safetensors")
        fs, remote = filesystem_for(uri)
        fs.put_file(f"{staging}/vit.safetensors", remote)


def export_llm(llm: LlamaForCausalLM, uri: str) -> None:
    if isinstance(llm, PeftModel):
        raise ValueError("export_llm saves a plain LLM; save a peft-wrapped one with export_mllm (adapter folder)")
    with _writable(uri) as folder:
        llm.save_pretrained(folder)


def export_vae(vae: AutoencoderKL, uri: str) -> None:
    with _writable(uri) as folder:
        vae.save_pretrained(folder)


def export_mllm(mllm: SeedStoryMLLM, config: ModelConfig, uri: str,
                tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Adapter (or full LLM), resamplers, tokenizer and manifest; a LoRA export needs ``llm.weights``."""
    with _writable(uri) as folder:
        if isinstance(mllm.llm, PeftModel):
            if config.llm.weights is None:
                raise WeightsError("a LoRA export needs its base LLM on storage: save it with export_llm "
                                   "before attaching LoRA and set model.llm.weights")
            mllm.llm.save_pretrained(folder / "adapter")
        else:
            mllm.llm.save_pretrained(folder / "llm")
        _save_module(mllm.input_resampler, folder / "input_resampler.safetensors")
        _save_module(mllm.output_resampler, folder / "output_resampler.safetensors")
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / "tokenizer")
        layout = mllm.layout
        _write_manifest(folder, "mllm", config, layout={
            "vocab_size": layout.vocab_size, "boi": layout.boi, "eoi": layout.eoi, "image": list(layout.image)})


def load_peft_adapter(llm: LlamaForCausalLM, folder: Path, is_trainable: bool) -> PeftModel:
    """``llm`` wrapped with the adapter in ``folder``, every adapter tensor present and shaped as the config says."""
    if not (folder / "adapter_config.json").is_file():
        raise WeightsError(f"{folder}: missing adapter_config.json")
    model = get_peft_model(llm, PeftConfig.from_pretrained(str(folder)))
    found = load_peft_weights(str(folder), device="cpu")
    expected = get_peft_model_state_dict(model)
    check_tensors({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in found.items()},
                  str(folder))
    set_peft_model_state_dict(model, found)
    if not is_trainable:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return model


def load_mllm(uri: str, is_trainable: bool = False) -> tuple[SeedStoryMLLM, PreTrainedTokenizerBase | None]:
    """The MLLM of an ``export_mllm`` folder and its tokenizer (None when none was saved)."""
    folder = local_copy(uri)
    manifest = _read_manifest(folder, "mllm")
    config = ModelConfig.model_validate(manifest["model"])
    layout = TokenLayout(**{**manifest["layout"], "image": tuple(manifest["layout"]["image"])})
    if (folder / "adapter").is_dir():
        if config.llm.weights is None:
            raise WeightsError(f"{uri}: the adapter's base LLM is unknown (model.llm.weights is null in {MANIFEST})")
        llm = load_peft_adapter(build_llm(config, layout.vocab_size), folder / "adapter", is_trainable)
    elif (folder / "llm").is_dir():
        llm = load_llm_weights(str(folder / "llm"), llama_config(config, layout.vocab_size), config.dtype)
        if llm.get_input_embeddings().num_embeddings != layout.vocab_size:
            raise WeightsError(f"{uri}: llm/ has {llm.get_input_embeddings().num_embeddings} token rows, "
                               f"the layout {layout.vocab_size}")
    else:
        raise WeightsError(f"{uri}: neither adapter/ nor llm/ is present")
    with torch.device("meta"):
        input_resampler, output_resampler = build_input_resampler(config), build_output_resampler(config)
    _load_module(input_resampler, folder / "input_resampler.safetensors")
    _load_module(output_resampler, folder / "output_resampler.safetensors")
    mllm = SeedStoryMLLM(llm, input_resampler, output_resampler, layout=layout, loss_weights=config.loss)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer") if (folder / "tokenizer").is_dir() else None
    return mllm, tokenizer


def load_mllm_vit(uri: str, device: str | torch.device = "cpu") -> VisionTransformer:
    """The ViT an ``export_mllm`` folder was trained with: the MLLM reads and regresses its features, so
    whatever runs the MLLM (stories, stage 3) uses this one, not the one a config names today."""
    config = export_model_config(uri, "mllm")
    if config.vit.weights is None:
        raise WeightsError(f"{uri}: the export names no ViT weights (model.vit.weights is null)")
    return build_vit(config, device)


def export_detokenizer(detokenizer: Detokenizer, uri: str) -> None:
    """UNet (diffusers folder), condition adapter and manifest; the VAE comes from ``vae.weights``."""
    config = detokenizer.config
    if config.vae.weights is None:
        raise WeightsError("a de-tokenizer export needs its VAE on storage: save it with export_vae and set "
                           "model.vae.weights")
    with _writable(uri) as folder:
        detokenizer.unet.save_pretrained(folder / DETOKENIZER_UNET)
        _save_module(detokenizer.adapter, folder / DETOKENIZER_ADAPTER)
        _write_manifest(folder, "detokenizer", config)


def load_detokenizer(uri: str) -> Detokenizer:
    folder = local_copy(uri)
    config = ModelConfig.model_validate(_read_manifest(folder, "detokenizer")["model"])
    unet = load_diffusers_weights(UNet2DConditionModel, str(folder / DETOKENIZER_UNET), unet_config(config),
                                  config.dtype)
    with torch.device("meta"):
        adapter = ConditionAdapter(config)
    _load_module(adapter, folder / DETOKENIZER_ADAPTER)
    return Detokenizer(config, adapter, unet, build_vae(config))
