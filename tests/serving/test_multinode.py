"""The story service over labelled Ray nodes: each role on its own nodes, a painter node lost mid-story, and
the head's GCS restarted against Redis under live stories.

The cluster (a CPU-less head, a writer node and two painter nodes on this machine) runs in a process
of its own: see ``tests/serving/multinode.py``. The models are this session's registered tiny ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from seedstory.models.weights import CACHE_ENV
from seedstory.stack.processes import free_port, port_in_use, wait_until
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def redis_address(tmp_path_factory):
    """A throwaway Redis on loopback for the cluster's GCS tables; None when redis-server is not installed."""
    if shutil.which("redis-server") is None:
        yield None
        return
    port, workdir = free_port(), tmp_path_factory.mktemp("redis")
    log = workdir / "redis.log"
    process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)])
    try:
        wait_until(lambda: port_in_use("127.0.0.1", port), timeout_s=30, what="redis-server", log=log)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def report(story_models, weights_cache, redis_address, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("serve-multinode") / "report.json"
    env = {**os.environ, CACHE_ENV: str(weights_cache)}
    if redis_address:
        # What KubeRay sets on worker pods when gcsFaultToleranceOptions is on: a raylet (and the driver)
        # waits up to 600 s for a restarted GCS, not Ray's default 60 s, before it exits.
        env["RAY_REDIS_ADDRESS"] = redis_address
        env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "600"
    done = subprocess.run([sys.executable, "-m", "tests.serving.multinode", str(out), str(free_port()),
                           *story_models.overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def test_writer_and_painter_replicas_run_on_their_own_nodes(report):
    placed = report["placed"]
    assert placed["writer"] == ["writer"]
    assert sorted(placed["painter"]) == ["painter-a", "painter-b"], "two painters, one per painter node"


def test_a_lost_painter_node_costs_no_picture(report):
    (removed,) = report["removed"]
    assert removed.startswith("painter")
    events = report["events"]
    assert events[-1]["type"] == "done", events[-3:]
    assert sorted(e["index"] for e in events if e["type"] == "image") == list(range(12))
    assert report["after"][-1] == "done"


def test_the_app_keeps_answering_while_the_heads_gcs_restarts_against_redis(report):
    if "gcs" not in report:
        pytest.skip("the GCS restart needs redis-server (make test-tools installs it)")
    gcs = report["gcs"]
    for story, segments in (("interrupted", 6), ("while_down", 3), ("restarted", 3)):
        events = gcs[story]
        assert events[-1]["type"] == "done", (story, events[-3:])
        assert sorted(e["index"] for e in events if e["type"] == "image") == list(range(segments)), story
    assert gcs["replicas_after"] == gcs["replicas_before"], "the restarted GCS reloaded its actor table from Redis"
