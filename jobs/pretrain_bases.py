"""Pretrain the tiny preset's bases on the toy world and write them to `train.base_weights`.

    ray job submit --working-dir . -- python jobs/pretrain_bases.py --config tiny [KEY=VALUE ...]

The tiny equivalent of downloading Qwen-VL and SD-XL's VAE. Recipe: config -> every frame of the
training stories with its caption, decoded once (Ray Data), and every story as text -> three Ray
Train + DeepSpeed stages, each with its MLflow run, export and model version: `train.vae_pretrain`
(the VAE as an autoencoder), `train.clip_pretrain` (the ViT as the image tower of a CLIP-style dual
encoder with a text tower) and `train.llm_pretrain` (the LLM on the stories as text) -> scored on
the val split, PASS/MISS against the targets (VAE round-trip coherence >= 0.98, caption->frame
top-1 among 64 >= 0.90) -> one base folder: tokenizer (trained on toy-world captions), ViT, text
encoder, VAE, LLM and the initial UNet, `base.json` with the scores written last. Every stage job
loads its bases from there. A pretrained folder for the same shapes is kept; --overwrite replaces
it. The paper preset has no such job: point `model.*.weights` at the released checkpoints.
"""

from __future__ import annotations

import argparse

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.training.bases import pretrain_bases


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial UNet (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace base weights already at the location")
    add_config_arguments(parser)
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    config = config_from_args(args)
    if config.train.base_weights is None:
        parser.error("train.base_weights is not set: where should the base weights go?")
    pretrain_bases(config, seed=args.seed, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
