"""``seedstory stack up|down|status|env``: the embedded local stack."""

from __future__ import annotations

import argparse
import json

from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.stack import LocalStack


def _stack(args: argparse.Namespace) -> LocalStack:
    config = config_from_args(args)
    return LocalStack(config.stack, bucket=config.storage.bucket)


def _up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.up()
    print(f"stack is up; to use it from a shell: source {stack.env_file}")
    print(f"  MLflow UI:      {stack.mlflow_url}")
    print(f"  Ray dashboard:  {stack.ray_dashboard_url}  (ray job submit --address {stack.ray_dashboard_url} ...)")
    print(f"  object storage: {stack.s3_url}  bucket s3://{stack.bucket}")
    return 0


def _down(args: argparse.Namespace) -> int:
    _stack(args).down()
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for name, state in status.items():
            line = f"{name:7s} {'up' if state['up'] else 'down':5s} {state['url']}"
            print(line + (f"  pid {state['pid']}" if state["pid"] else ""))
    return 0 if all(s["up"] for s in status.values()) else 3


def _env(args: argparse.Namespace) -> int:
    print(f"source {_stack(args).env_file}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    stack = subparsers.add_parser("stack", help="run the embedded local stack (SeaweedFS S3, MLflow, Ray head)")
    actions = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in [
        ("up", _up, "start whatever is not running yet (a no-op for what is)"),
        ("down", _down, "stop exactly the processes this stack started"),
        ("status", _status, "which services are up (exit 0 only if all are)"),
        ("env", _env, "print the line that puts the stack's endpoints into a shell"),
    ]:
        sub = actions.add_parser(name, help=text, description=text)
        add_config_arguments(sub)
        if name == "status":
            sub.add_argument("--json", action="store_true", help="one JSON object on stdout")
        sub.set_defaults(handler=handler)
