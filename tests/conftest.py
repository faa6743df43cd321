"""Session-scoped real services: one SeaweedFS S3 server, one MLflow server, one Ray head.

Fixtures start only what a test asks for, on free ports, and stop it all at the end of the
session, so the suite passes on a fresh clone with nothing running beforehand.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from seedstory.config.infra import StackConfig
from seedstory.stack import LocalStack, free_port
from seedstory.stack.local import RAY_ON_LOOPBACK
from seedstory.stack.processes import port_in_use

REPO_ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.story_models"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray reads the mode when it is imported (the token only when it first connects): the session's
# stack runs with token authentication, so this process must speak it before anything imports ray.
os.environ["RAY_AUTH_MODE"] = "token"
# The stack's Ray listens on loopback only, and Ray reads how to address it at import as well.
os.environ.update(RAY_ON_LOOPBACK)


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports, above Ray's worker ports, below the ephemeral range."""
    for first in range(random.randrange(20000, 32000 - count), 32000 - count, count):
        if not any(port_in_use("127.0.0.1", port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports between 20000 and 32000")


def free_stack_config(state_dir) -> StackConfig:
    return StackConfig(
        state_dir=state_dir, s3_port=free_port(), s3_internal_ports_from=free_port_block(9),
        mlflow_port=free_port(), ray_gcs_port=free_port(),
        ray_dashboard_port=free_port(), ray_client_port=free_port(), ray_agent_port=free_port(),
        ray_object_store_mb=512, start_timeout_s=120,
    )


@pytest.fixture(scope="session")
def session_stack(tmp_path_factory):
    stack = LocalStack(free_stack_config(tmp_path_factory.mktemp("stack")), bucket="seedstory-test")
    saved = dict(os.environ)
    os.environ.update(stack.client_env())
    yield stack
    stack.down(report=lambda _: None)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def s3(session_stack) -> LocalStack:
    """The local S3 server, with the test bucket created; the environment points at it."""
    session_stack.up(only=["s3"], report=lambda _: None)
    return session_stack


@pytest.fixture(scope="session")
def mlflow_server(s3) -> LocalStack:
    s3.up(only=["s3", "mlflow"], report=lambda _: None)
    return s3


@pytest.fixture(scope="session")
def ray_head(mlflow_server) -> LocalStack:
    mlflow_server.up(report=lambda _: None)
    return mlflow_server


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """A driver in the test process connected to the session's Ray head."""
    import ray

    # Workers import functions defined in test modules by reference: give them the repo root.
    ray.init(address=ray_head.ray_gcs_address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    yield ray_head
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP spinning stalls on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_base_config(tmp_path_factory):
    """The tiny preset (4 toy stories) reading a base folder of random parts written for this module."""
    from seedstory.config import load_config
    from seedstory.training.base_weights import with_base_weights, write_tiny_base

    root = tmp_path_factory.mktemp("base")
    raw = load_config("tiny", [f"train.base_weights={root}", "data.toy.stories=4"])
    write_tiny_base(raw, str(root))
    return with_base_weights(raw)
