"""``seedstory serve build|deploy``: the story service's deploy config, and deploying it to a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seedstory.serving.deploy import APP_IMPORT_PATH, APP_NAME, DEFAULT_FILE, ServeCommandError, build_config, deploy


def _build(args: argparse.Namespace) -> int:
    text = build_config()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} (serve build {APP_IMPORT_PATH}; HTTP on loopback, application {APP_NAME!r})")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    try:
        url = deploy(args.file, args.address, args.timeout)
    except ServeCommandError as err:
        print(f"seedstory serve deploy: error: {err}", file=sys.stderr)
        return 1
    print(f"serving: {url}/  (storybook page)  POST {url}/v1/stories  GET {url}/v1/models")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    text = "the story service on Ray Serve: build its deploy config, deploy it"
    parser = subparsers.add_parser("serve", help=text, description=text)
    commands = parser.add_subparsers(dest="serve_command", required=True, metavar="ACTION")
    build = commands.add_parser("build", help="write the deploy config (serve build + loopback HTTP)")
    build.add_argument("--out", type=Path, default=DEFAULT_FILE, help=f"where to write it (default: {DEFAULT_FILE})")
    build.set_defaults(handler=_build)
    up = commands.add_parser("deploy", help="serve deploy a config file and wait until the service answers")
    up.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"the deploy config (default: {DEFAULT_FILE})")
    up.add_argument("--address", help="the Ray dashboard address (default: $RAY_API_SERVER_ADDRESS)")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the service (default: 300)")
    up.set_defaults(handler=_deploy)
