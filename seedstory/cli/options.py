"""Arguments every config-driven subcommand (and job) shares: a config source and overrides."""

from __future__ import annotations

import argparse

from seedstory.config import SeedStoryConfig, load_config, preset_names


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="tiny",
        help=f"a shipped preset ({', '.join(preset_names())}) or a YAML file (default: %(default)s)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="override any config key, e.g. stack.s3_port=9500 train.story_instruct.lr=3e-4",
    )


def config_from_args(args: argparse.Namespace) -> SeedStoryConfig:
    return load_config(args.config, args.overrides)
