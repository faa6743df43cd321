"""``seedstory serve build|deploy``: the story service's deploy config, and deploying it to a Ray cluster.

``build`` is Ray's ``serve build`` of ``seedstory.serving.app:app`` with two edits: the HTTP
proxy listens on ``serve.host`` (loopback by default, where ``serve build`` writes every
interface) and the application is named ``seedstory``. ``deploy`` is ``serve deploy`` followed
by waiting until the service answers, so a script can use it as soon as the command returns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

APP_IMPORT_PATH = "seedstory.serving.app:app"
APP_NAME = "seedstory"
DEFAULT_FILE = Path("serve/config.yaml")


class ServeCommandError(RuntimeError):
    pass


def _serve_bin() -> str:
    candidate = Path(sys.executable).parent / "serve"
    return str(candidate) if candidate.exists() else "serve"


def build_config() -> str:
    """The deploy config of the application, as ``serve build`` writes it plus the two edits."""
    from seedstory.config import load_config

    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / "config.yaml"
        done = subprocess.run([_serve_bin(), "build", APP_IMPORT_PATH, "--output-path", str(built)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServeCommandError(f"serve build failed ({done.returncode}):\n{(done.stderr or done.stdout)[-4000:]}")
        text = built.read_text()
    serve = load_config("demo").serve
    for old, new in ((f"  host: {_built_host(text)}\n  port: 8000\n", f"  host: {serve.host}\n  port: {serve.port}\n"),
                     ("- name: app1\n", f"- name: {APP_NAME}\n")):
        if old not in text:
            raise ServeCommandError(f"serve build's output has changed shape: {old.strip()!r} not found")
        text = text.replace(old, new, 1)
    return text


def _built_host(text: str) -> str:
    return yaml.safe_load(text)["http_options"]["host"]


def http_address(config_file: Path) -> str:
    options = yaml.safe_load(config_file.read_text()).get("http_options", {})
    return f"http://{options.get('host', '127.0.0.1')}:{options.get('port', 8000)}"


def deploy(config_file: Path, address: str | None, timeout_s: float) -> str:
    """``serve deploy`` the file, then wait until ``/healthz`` answers and every application is RUNNING."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    done = subprocess.run([_serve_bin(), "deploy", str(config_file), "--address", address],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServeCommandError(f"serve deploy failed ({done.returncode}):\n{done.stderr[-4000:]}")
    url = http_address(config_file)
    deadline = time.monotonic() + timeout_s
    while True:
        status = _application_status(address)
        if status and all(s == "RUNNING" for s in status.values()) and _answers(f"{url}/healthz"):
            return url
        failed = {name: s for name, s in status.items() if s == "DEPLOY_FAILED"}
        if failed:
            raise ServeCommandError(f"deploying {config_file} failed: {failed}; see `serve status --address {address}`")
        if time.monotonic() > deadline:
            raise ServeCommandError(f"{config_file} not serving after {timeout_s:.0f} s (applications: {status}); "
                                    f"see `serve status --address {address}`")
        time.sleep(1.0)


def _application_status(address: str) -> dict[str, str]:
    try:
        with urllib.request.urlopen(f"{address}/api/serve/applications/", timeout=5) as response:
            applications = json.load(response).get("applications", {})
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {name: app.get("status", "") for name, app in applications.items()}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
