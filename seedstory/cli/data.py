"""``seedstory validate-data`` and ``seedstory generate-data``: datasets without Ray."""

from __future__ import annotations

import argparse
import json
import sys

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.data.sources import split_uris
from seedstory.data.stories import scan_dataset
from seedstory.data.toyworld.generate import write_toy_world


def _validate(args: argparse.Namespace) -> int:
    budget = args.failure_budget if args.failure_budget is not None else config_from_args(args).data.failure_budget
    try:
        ledger = scan_dataset(split_uris(args.jsonl), args.image_root, budget)
    except (FileNotFoundError, ValueError) as err:
        print(f"seedstory validate-data: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(ledger.summary()))
    else:
        print(ledger.log_line())
        for record in ledger.first_bad:
            print(f"  {record.file}:{record.line}  {record.kind}  {record.detail}")
        if ledger.over_budget:
            print(f"over the failure budget ({budget:g}): fix the data or raise data.failure_budget", file=sys.stderr)
    return 1 if ledger.over_budget else 0


def _generate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    summary = write_toy_world(config.data.toy, args.out)
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    text = "scan a StoryStream dataset, decoding every image, and count bad records by kind"
    validate = subparsers.add_parser("validate-data", help=text, description=text)
    validate.add_argument("--jsonl", required=True, help="JSONL URI(s), comma-separated; globs allowed")
    validate.add_argument("--image-root", required=True, help="the root the story image paths are relative to")
    validate.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    validate.add_argument("--failure-budget", type=float, default=None,
                          help="fraction of bad stories tolerated (default: data.failure_budget of the config)")
    add_config_arguments(validate)
    validate.set_defaults(handler=_validate)

    text = "write the toy world (train/val/test JSONL + images) to a local path or s3:// URI"
    generate = subparsers.add_parser("generate-data", help=text, description=text)
    generate.add_argument("--out", default=None, help="where to write (default: data.toy.uri of the config)")
    add_config_arguments(generate)
    generate.set_defaults(handler=_generate)
