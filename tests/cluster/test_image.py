"""The project image installs exactly the lock on Ray's own image of the installed Ray version."""

from __future__ import annotations

import re
import sys

import ray

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "cluster" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def lock() -> dict[str, str]:
    pins = [line.split("==") for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    return {name.lower(): version for name, version in pins}


def test_the_image_starts_from_the_installed_rays_own_image():
    steps = instructions()
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    assert args["RAY_VERSION"] == ray.__version__
    assert args["PYTHON"] == f"py{sys.version_info.major}{sys.version_info.minor}"
    (base,) = [a for kind, a in steps if kind == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-${PYTHON}${VARIANT}"
    assert lock()["ray"] == ray.__version__


def test_every_install_resolves_inside_the_lock():
    steps = instructions()
    order = [kind for kind, _ in steps]
    copied = next(i for i, (kind, a) in enumerate(steps) if kind == "COPY" and "constraints.txt" in a)
    env = next(i for i, (kind, a) in enumerate(steps) if kind == "ENV" and "PIP_CONSTRAINT=" in a)
    assert "PIP_CONSTRAINT=/home/ray/seedstory/constraints.txt" in steps[env][1] and copied < env
    installs = [(i, a) for i, (kind, a) in enumerate(steps) if kind == "RUN" and "pip install" in a]
    assert installs and all(i > env for i, _ in installs), order
    commands = " ".join(a for _, a in installs)
    assert "==" not in commands, "versions come from the lock alone"
    locked = lock()
    for package in re.findall(r"pip install [^&]*?(?:\$\{index:-\} |--no-build-isolation )([a-z][\w-]*)", commands):
        assert package in locked, f"{package} is installed but not in the lock"
    assert {"torch", "deepspeed"} <= set(re.findall(r"\b(torch|deepspeed)\b", commands))
    assert commands.rstrip().endswith("pip install --no-cache-dir . && pip check")
