"""Stage 1, de-tokenizer pretraining: condition adapter + SD-XL UNet learn to paint frames from ViT features.

    ray job submit --working-dir . -- python jobs/detokenizer_pretrain.py --config tiny [KEY=VALUE ...]

Trained (inside the DeepSpeed engine): the condition adapter and the UNet, in full, on the diffusion
noise MSE of each frame's VAE latents. Frozen (outside it, in the compute dtype, no gradients): the
ViT, which reads the frame (the condition), and the VAE, which encodes it. Data: every frame of the
training stories, a fresh random order each pass (+ the val split, evaluated every `val_every` steps).
Export: the diffusers UNet + the adapter -> model version
`train.detokenizer_pretrain.registered_model`@candidate.
Re-submit with the same `train.run_name=NAME` to resume from its latest checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.config.model import ModelConfig
from seedstory.data.stage_collate import FrameCollate
from seedstory.data.streams import stage_stream
from seedstory.models import freezing
from seedstory.models.detokenizer import build_vae, encode_frames
from seedstory.models.export import export_detokenizer
from seedstory.models.partitioned import build_trained_detokenizer
from seedstory.models.vit import build_vit
from seedstory.training.denoising import Denoising
from seedstory.training.recipe import StageRecipe
from seedstory.training.run import start_stage


class FrameEncoder(nn.Module):
    """A frame -> its ViT features (the condition) and its VAE latents (what is denoised)."""

    def __init__(self, vit: nn.Module, vae: AutoencoderKL, config: ModelConfig) -> None:
        super().__init__()
        self.vit = vit
        self.vae = vae
        self.config = config

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"latents": encode_frames(self.vae, self.config, batch["sd_pixels"]),
                "features": self.vit(batch["vit_pixels"]), "time_ids": batch["add_time_ids"]}


class DetokenizerPretrain(StageRecipe):
    STAGE = "detokenizer_pretrain"
    WEIGHTS = ("vit", "vae")

    def frozen(self) -> nn.Module:
        vit, vae = build_vit(self.config.model), build_vae(self.config.model)
        freezing.freeze(vit, vae)
        return FrameEncoder(vit, vae, self.config.model)

    def build(self) -> nn.Module:
        detokenizer = build_trained_detokenizer(self.config.model)
        freezing.train(detokenizer)
        if self.config.train.detokenizer_pretrain.activation_checkpointing:
            detokenizer.unet.enable_gradient_checkpointing()
        return Denoising(detokenizer, self.config.model.loss)

    def collate(self) -> NumpyBatchCollateFn:
        return FrameCollate()

    def export(self, model: nn.Module, uri: str) -> dict[str, str]:
        export_detokenizer(model.detokenizer, uri)
        return {"detokenizer": uri}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    return parser


def main() -> None:
    config = config_from_args(arguments().parse_args())

    with start_stage(DetokenizerPretrain, config) as run:
        frames, report = stage_stream(run.stage, run.config)
        run.fit(frames, run.validation_set())
        run.log_data(report)
        run.register()
    print(run.where_to_look())


if __name__ == "__main__":
    main()
