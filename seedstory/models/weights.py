"""Real weights from local or ``s3://`` folders, checked tensor by tensor.

Remote folders are downloaded once per version into a local cache (``SEEDSTORY_WEIGHTS_CACHE``,
default ``~/.cache/seedstory/weights``) because transformers, diffusers and peft read local folders.
A load fails with ``WeightsError`` naming every missing, unexpected or mis-shaped tensor and
every config field that disagrees with the preset: a half-loaded model never runs silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from seedstory.storage import filesystem_for, is_remote, strip_scheme
from seedstory.tokenizer import add_image_tokens, image_token_ids

CACHE_ENV = "SEEDSTORY_WEIGHTS_CACHE"
COMPLETE = ".seedstory-complete"
QWEN_VISUAL_PREFIX = "transformer.visual."
LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads")


class WeightsError(ValueError):
    """Weights that do not fit the model; the message names the tensors or config fields."""


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "seedstory" / "weights"))


def local_copy(uri: str) -> Path:
    """A local path holding ``uri`` (a file or folder); ``s3://`` content is downloaded once per version.

    The cache keys on content: each version of a remote folder (its files' names, sizes and ETags)
    gets its own snapshot folder, so a re-export with the same shapes is never served stale.
    """
    if not is_remote(uri):
        path = Path(strip_scheme(uri))
        if not path.exists():
            raise FileNotFoundError(f"weights not found: {uri}")
        return path
    fs, remote = filesystem_for(uri)
    fs.invalidate_cache(remote)
    try:
        info = fs.info(remote)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights not found: {uri}") from None
    single_file = info["type"] == "file"
    found = {remote: info} if single_file else fs.find(remote, detail=True)
    base = Path(remote).parent if single_file else Path(remote)
    files = {Path(path).relative_to(base).as_posix(): (path, info) for path, info in found.items()}
    version = hashlib.sha256(json.dumps(
        sorted((name, info["size"], info["ETag"]) for name, (_, info) in files.items())).encode()).hexdigest()[:16]
    snapshot = cache_root() / "snapshots" / remote / version
    if not (snapshot / COMPLETE).is_file():
        for name, (source, _) in files.items():
            local = snapshot / name
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f"{local.name}.{os.getpid()}.partial")  # workers on one node share the cache
            fs.get_file(source, str(partial))
            partial.replace(local)
        (snapshot / COMPLETE).touch()
    return snapshot / Path(remote).name if single_file else snapshot


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_tensors(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise naming every tensor that is missing from, extra in or mis-shaped in ``found``."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{name} {list(found[name])} (expected {list(expected[name])})"
                        for name in set(expected) & set(found) if tuple(found[name]) != tuple(expected[name]))
    problems = [f"{label}: {_names(names)}" for label, names in
                (("missing tensors", missing), ("unexpected tensors", unexpected), ("mismatched shapes", mismatched))
                if names]
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))


def safetensors_files(path: Path) -> list[Path]:
    """The safetensors of a file or an HF-style folder (single file or sharded with an index)."""
    if path.is_file():
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
        return [path / shard for shard in sorted(shards)]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path}: no .safetensors file (only safetensors weights are read)")
    return files


def read_tensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor whose name starts with ``prefix``, the prefix stripped."""
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(prefix):
                    tensors[name[len(prefix):]] = handle.get_tensor(name)
    return tensors


def load_module_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str,
                        dtype: torch.dtype | None = None) -> nn.Module:
    """Load a complete state dict into ``module`` (built on ``meta`` or not), strictly."""
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    check_tensors(expected, {name: tuple(value.shape) for name, value in tensors.items()}, source)
    if dtype is not None:
        tensors = {name: value.to(dtype) if value.is_floating_point() else value for name, value in tensors.items()}
    module.load_state_dict(dict(tensors), strict=True, assign=True)
    still_meta = [name for name, value in [*module.named_parameters(), *module.named_buffers()] if value.is_meta]
    if still_meta:
        raise WeightsError(f"{source}: no values for {_names(still_meta)}")
    return module


def check_config(expected: Mapping[str, object], found: Mapping[str, object], source: str) -> None:
    wrong = [f"{key}={found.get(key)!r} (preset: {value!r})" for key, value in expected.items()
             if _plain(found.get(key)) != _plain(value)]
    if wrong:
        raise WeightsError(f"{source}: config does not match the preset: {', '.join(wrong)}")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


def _raise_on_loading_info(info: Mapping[str, list], source: str) -> None:
    problems = [f"{label}: {_names(sorted(str(k) for k in info.get(key) or []))}"
                for key, label in (("missing_keys", "missing tensors"), ("unexpected_keys", "unexpected tensors"),
                                   ("mismatched_keys", "mismatched shapes"))
                if info.get(key)]
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))


def load_llm_weights(uri: str, expected: LlamaConfig, dtype: str) -> LlamaForCausalLM:
    """A transformers LLaMA folder (config.json + safetensors) shaped as ``expected``, vocabulary aside."""
    path = local_copy(uri)
    found = LlamaConfig.from_pretrained(path)
    check_config({key: getattr(expected, key) for key in LLAMA_FIELDS}, found.to_dict(), uri)
    llm, info = LlamaForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), output_loading_info=True)
    _raise_on_loading_info(info, uri)
    return llm


def load_diffusers_weights(cls: type, uri: str, expected: Mapping[str, object], dtype: str) -> nn.Module:
    """A diffusers model folder (config.json + safetensors) whose config matches ``expected``."""
    path = local_copy(uri)
    check_config(expected, cls.load_config(path), uri)
    model, info = cls.from_pretrained(path, torch_dtype=torch_dtype(dtype), output_loading_info=True)
    _raise_on_loading_info(info, uri)
    return _realigned(model)


def _realigned(module: nn.Module) -> nn.Module:
    """Give every tensor its own allocation.

    diffusers may leave tensors as views into the memory-mapped file at unaligned addresses;
    CPU kernels then take other code paths and outputs differ from the saved model's in the
    last bits. Copies are aligned, so an export reloads bit-identical.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()
    return module


def load_vit_weights(vit: nn.Module, uri: str, dtype: str) -> nn.Module:
    """Qwen-VL's visual tower from a Qwen-VL folder (``transformer.visual.*``) or a bare ViT safetensors."""
    path = local_copy(uri)
    tensors = read_tensors(path, QWEN_VISUAL_PREFIX) or read_tensors(path)
    return load_module_tensors(vit, tensors, uri, torch_dtype(dtype))


def load_tokenizer(uri: str, image_tokens: int) -> PreTrainedTokenizerBase:
    """A saved tokenizer folder (e.g. LLaMA-2's), extended with BOI, EOI and the image tokens it lacks."""
    tokenizer = AutoTokenizer.from_pretrained(local_copy(uri))
    add_image_tokens(tokenizer, image_tokens)
    image_token_ids(tokenizer, image_tokens)
    return tokenizer
