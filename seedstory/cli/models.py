"""``seedstory summary``: parameter counts of a preset's components, built on the meta device."""

from __future__ import annotations

import argparse
import json

from seedstory.config import load_config, preset_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("summary", help="parameter count of each model component (no weights loaded)")
    parser.add_argument("--preset", default="tiny",
                        help=f"a shipped preset ({', '.join(preset_names())}) or a YAML file (default: tiny)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: component -> parameter count")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.lora.r=16")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from seedstory.models.summary import parameter_counts

    counts = parameter_counts(load_config(args.preset, args.overrides).model)
    if args.json:
        print(json.dumps(counts))
        return 0
    width = max(map(len, counts))
    for name, value in counts.items():
        print(f"{name:<{width}}  {value:>15,}")
    return 0
