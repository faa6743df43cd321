"""Write the tiny preset's base parts, random but seeded, to `train.base_weights` (idempotent).

    ray job submit --working-dir . -- python jobs/init_base_weights.py --config tiny [KEY=VALUE ...]

The shapes without the learning, in seconds: tokenizer (trained on toy-world captions), ViT, LLM,
VAE and the initial UNet, for runs that test the stages' mechanics. `jobs/pretrain_bases.py` writes
the same folder with the bases trained. An existing folder for the same shapes is kept;
--overwrite replaces it.
"""

from __future__ import annotations

import argparse
import json

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.training.base_weights import write_tiny_base


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace base weights already at the location")
    add_config_arguments(parser)
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    config = config_from_args(args)
    if config.train.base_weights is None:
        parser.error("train.base_weights is not set: where should the base weights go?")

    manifest = write_tiny_base(config, config.train.base_weights, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(manifest["parts"], indent=2))


if __name__ == "__main__":
    main()
