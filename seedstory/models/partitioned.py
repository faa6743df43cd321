"""The de-tokenizer's trained half built for DeepSpeed ZeRO-3, with its weights, never whole on one worker.

Under ``deepspeed.zero.Init`` every submodule's parameters are partitioned across the workers as soon
as the submodule is made, so the UNet never exists whole; diffusers' ``from_pretrained`` cannot load
into such a network. ``load_partitioned`` copies the weights in one submodule at a time: the
submodule's shards are gathered, rank 0 copies its tensors from the safetensors files (read tensor by
tensor, never the whole state dict) and DeepSpeed scatters them again as the gather closes. Built
outside ``zero.Init`` the same code loads the whole network on every rank.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from torch import nn

from seedstory.config.model import ModelConfig
from seedstory.models.detokenizer import ConditionAdapter, Detokenizer, unet_config
from seedstory.models.export import DETOKENIZER_ADAPTER, DETOKENIZER_UNET, export_model_config
from seedstory.models.weights import check_config, check_tensors, local_copy, safetensors_files


def _full_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def load_partitioned(module: nn.Module, path: Path, source: str) -> nn.Module:
    """Copy the safetensors at ``path`` (a file or a folder) into ``module``, strictly, submodule by submodule."""
    state = module.state_dict(keep_vars=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    with ExitStack() as files, torch.no_grad():
        handles = {}
        for file in safetensors_files(path):
            handle = files.enter_context(safe_open(str(file), framework="pt"))
            handles.update(dict.fromkeys(handle.keys(), handle))
        check_tensors({name: _full_shape(tensor) for name, tensor in state.items()},
                      {name: tuple(handle.get_slice(name).get_shape()) for name, handle in handles.items()}, source)
        for prefix, submodule in module.named_modules():
            own = {name: tensor for name, tensor in ((f"{prefix}.{local}" if prefix else local, tensor) for local, tensor
                   in [*submodule.named_parameters(recurse=False), *submodule.named_buffers(recurse=False)])
                   if name in state}
            parameters = [tensor for tensor in own.values() if isinstance(tensor, nn.Parameter)]
            partitioned = any(hasattr(p, "ds_id") for p in parameters)
            with deepspeed.zero.GatheredParameters(parameters, modifier_rank=0):
                for name, tensor in own.items():
                    if rank == 0 or not partitioned or not isinstance(tensor, nn.Parameter):
                        tensor.data.copy_(handles[name].get_tensor(name))
    return module


def load_unet(config: ModelConfig, folder: Path, source: str) -> UNet2DConditionModel:
    """A diffusers UNet folder whose config matches the preset's, loaded by ``load_partitioned``."""
    expected = unet_config(config)
    check_config(expected, UNet2DConditionModel.load_config(folder), source)
    return load_partitioned(UNet2DConditionModel(**expected), folder, source)


def build_trained_detokenizer(config: ModelConfig) -> Detokenizer:
    """Stage 1's: a fresh condition adapter and the base UNet (``model.unet.weights``, else random), no VAE."""
    adapter = ConditionAdapter(config)
    if config.unet.weights is None:
        unet = UNet2DConditionModel(**unet_config(config))
    else:
        unet = load_unet(config, local_copy(config.unet.weights), config.unet.weights)
    return Detokenizer(config, adapter, unet, vae=None)


def load_trained_detokenizer(uri: str) -> Detokenizer:
    """Stage 3's: the adapter and UNet of a de-tokenizer export, no VAE."""
    config = export_model_config(uri, "detokenizer")
    folder = local_copy(uri)
    adapter = load_partitioned(ConditionAdapter(config), folder / DETOKENIZER_ADAPTER, uri)
    unet = load_unet(config, folder / DETOKENIZER_UNET, f"{uri}/{DETOKENIZER_UNET}")
    return Detokenizer(config, adapter, unet, vae=None)
