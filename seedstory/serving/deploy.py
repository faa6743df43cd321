"""Deploy configs of the story service and deploying them: ``serve build`` and ``serve deploy``, scripted.

``build_config`` is Ray's ``serve build`` of ``seedstory.serving.app:app`` with two edits: the
HTTP proxy listens on ``serve.host`` and ``serve.port`` (loopback by default, where ``serve build``
writes every interface) and the application is named ``seedstory``. ``deploy`` is ``serve deploy`` followed by
waiting until the service answers, so whatever runs next can use it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

APP_IMPORT_PATH = "seedstory.serving.app:app"
APP_NAME = "seedstory"
DEFAULT_FILE = Path("serve/config.yaml")
APPLY_GRACE_S = 1.0  # ten of Serve's control loops (0.1 s each): a deploy's deployments have turned UPDATING by then


class ServeCommandError(RuntimeError):
    """A ``serve`` command failed, or the service it deployed never answered; the message says which."""


def _serve(*args: str) -> None:
    """Run Ray's ``serve`` CLI (the one next to this interpreter first); its output is the error on failure."""
    candidate = Path(sys.executable).parent / "serve"
    command = [str(candidate) if candidate.exists() else "serve", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServeCommandError(f"serve {args[0]} failed ({done.returncode}):\n{(done.stderr or done.stdout)[-4000:]}")


def build_config() -> str:
    """The deploy config of the application, as ``serve build`` writes it plus the two edits."""
    from seedstory.config import load_config

    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / "config.yaml"
        _serve("build", APP_IMPORT_PATH, "--output-path", str(built))
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
    """``serve deploy`` the file, then wait until the controller has applied it, every application is
    RUNNING with every deployment HEALTHY, and ``/healthz`` answers.

    Applied: each application's ``last_deployed_time_s`` moved, and ``APPLY_GRACE_S`` of control loops
    have passed since. A re-deploy that changes only ``user_config`` (another alias) leaves the
    application RUNNING: its deployments turn UPDATING only in the controller's next loop, and HEALTHY
    again once every replica's ``reconfigure`` returned, so RUNNING alone can be the old models."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    before = {name: app.get("last_deployed_time_s") for name, app in _applications(address).items()}
    _serve("deploy", str(config_file), "--address", address)
    url = http_address(config_file)
    deadline = time.monotonic() + timeout_s
    applied_at = None
    while True:
        applications = _applications(address)
        status = {name: app.get("status", "") for name, app in applications.items()}
        if applied_at is None and applications and all(
                app.get("last_deployed_time_s") != before.get(name) for name, app in applications.items()):
            applied_at = time.monotonic()
        settled = applied_at is not None and time.monotonic() - applied_at >= APPLY_GRACE_S
        healthy = all(s == "RUNNING" for s in status.values()) and all(
            deployment.get("status") == "HEALTHY"
            for app in applications.values() for deployment in app.get("deployments", {}).values())
        if settled and healthy and _answers(f"{url}/healthz"):
            return url
        failed = {name: s for name, s in status.items() if s == "DEPLOY_FAILED"}
        if failed:
            raise ServeCommandError(f"deploying {config_file} failed: {failed}; see `serve status --address {address}`")
        if time.monotonic() > deadline:
            raise ServeCommandError(f"{config_file} not serving after {timeout_s:.0f} s (applications: {status}); "
                                    f"see `serve status --address {address}`")
        time.sleep(1.0)


def dashboard_headers() -> dict[str, str]:
    """The header a cluster with Ray's token authentication asks of dashboard clients (the token from the environment)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _applications(address: str) -> dict[str, dict]:
    request = urllib.request.Request(f"{address}/api/serve/applications/", headers=dashboard_headers())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            applications = json.load(response).get("applications", {})
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ServeCommandError(f"the Ray dashboard at {address} refused the request ({err.code}): "
                                    "set RAY_AUTH_TOKEN to the cluster's token") from err
        return {}
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return applications


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def with_selection(deploy_config: dict[str, Any], user_config: dict[str, Any], port: int | None = None,
                   env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """A copy of a deploy config serving other models (every deployment's ``user_config``), on another port."""
    changed = copy.deepcopy(deploy_config)
    if port is not None:
        changed["http_options"]["port"] = port
    (app,) = changed["applications"]
    if env_vars:
        app["runtime_env"] = {**app.get("runtime_env", {}), "env_vars": dict(env_vars)}
    for deployment in app["deployments"]:
        deployment["user_config"] = copy.deepcopy(user_config)
    return changed


def shutdown(address: str) -> None:
    _serve("shutdown", "--yes", "--address", address)
