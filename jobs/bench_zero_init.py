"""Stage 3's trained half on one accelerator: built under deepspeed.zero.Init from a diffusers UNet folder, then
ZeRO-3 training steps; build time, peak memory and step time against DeepSpeed's model-state estimate (JSON).

    python jobs/bench_zero_init.py --config paper --device cuda --out DIR [--checkpointing]
    python jobs/bench_zero_init.py --config tiny --device cpu --steps 2 --out DIR

One process, no Ray (a bare GPU machine runs it). Recipe: a UNet with random weights at the preset's
shapes written as a diffusers folder -> condition adapter + that UNet built inside
`seedstory.training.deepspeed_engine.partitioned_build` and filled by `seedstory.models.partitioned`
-> the stage's DeepSpeed engine -> `--steps` steps on random latents and features at the preset's
sizes (the frozen MLLM, ViT and VAE, which run outside the engine, are not built) ->
`DIR/zero_init.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import UNet2DConditionModel
from torch import nn

from seedstory import storage
from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.models import freezing
from seedstory.models.detokenizer import ConditionAdapter, Detokenizer, unet_config
from seedstory.models.partitioned import load_unet
from seedstory.models.weights import torch_dtype
from seedstory.models.zero_memory import FROZEN_BYTES, stage_parameters
from seedstory.training.deepspeed_engine import compute_dtype, initialize, partitioned_build
from seedstory.training.denoising import Denoising


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (local path or s3://)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpointing", action="store_true", help="recompute the UNet's activations in backward")
    add_config_arguments(parser)
    return parser


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    args = arguments().parse_args()
    config = config_from_args(args)
    model, stage = config.model, config.train.detokenizer_adapt.model_copy(update={"zero_stage": 3})
    device = torch.device(args.device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"),
                      RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    report: dict = {"preset": model.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else "cpu", "torch": torch.__version__, "micro_batch_size": stage.micro_batch_size,
                    "activation_checkpointing": args.checkpointing}

    with tempfile.TemporaryDirectory(prefix="seedstory-zero-init-") as folder:
        with torch.device(device):
            UNet2DConditionModel(**unet_config(model)).to(torch_dtype(model.dtype)).save_pretrained(folder)
        reset_peak(device)
        started = time.perf_counter()
        with partitioned_build(stage, world_size=1):
            detokenizer = Detokenizer(model, ConditionAdapter(model), load_unet(model, Path(folder), folder), vae=None)
        report["build_s"] = round(time.perf_counter() - started, 2)
        report["build_peak_bytes"] = peak_bytes(device)
    report["partitioned"] = all(hasattr(p, "ds_id") for p in detokenizer.parameters())
    freezing.train(detokenizer)
    if args.checkpointing:
        detokenizer.unet.enable_gradient_checkpointing()
    engine: nn.Module = initialize(Denoising(detokenizer, model.loss), stage, world_size=1)

    batch, side, dtype = stage.micro_batch_size, model.unet.sample_size, compute_dtype(stage)
    size = float(model.sd_image_size)
    inputs = {"latents": torch.randn(batch, model.vae.latent_channels, side, side, device=device, dtype=dtype),
              "features": torch.randn(batch, model.vit.num_queries, model.vit.output_dim, device=device, dtype=dtype),
              "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device, dtype=dtype)}
    reset_peak(device)
    steps, losses = [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        terms = engine(inputs)
        engine.backward(terms["loss"])
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps.append(round(time.perf_counter() - started, 3))
        losses.append(float(terms["loss"].detach()))
    counts = stage_parameters(model)["detokenizer_adapt"]
    report.update(step_s=steps, losses=losses, train_peak_bytes=peak_bytes(device), trainable=counts.trainable,
                  estimated_model_state_bytes=counts.per_gpu_bytes(1)["zero3_trainable_only"]
                  - FROZEN_BYTES * counts.frozen)
    storage.write_bytes(storage.join(args.out, "zero_init.json"), json.dumps(report, indent=2).encode())
    print(json.dumps(report, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
