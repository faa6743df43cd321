"""The ``seedstory`` command: everything that is not a Ray job."""

from __future__ import annotations

import argparse
import sys

from seedstory.cli import compare, data, generate, models, serve, stack
from seedstory.config import ConfigError
from seedstory.stack import StackError

SUBCOMMANDS = [stack, data, models, generate, serve, compare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seedstory", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, StackError) as err:
        print(f"seedstory: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
