"""The story service over labelled Ray nodes: each role on its own nodes, and a painter node lost mid-story.

The cluster (a CPU-less head, a writer node and two painter nodes on this machine) runs in a process
of its own: see ``tests/serving/multinode.py``. The models are this session's registered tiny ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seedstory.models.weights import CACHE_ENV
from seedstory.stack import free_port
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def report(story_models, weights_cache, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("serve-multinode") / "report.json"
    done = subprocess.run([sys.executable, "-m", "tests.serving.multinode", str(out), str(free_port()),
                           *story_models.overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, CACHE_ENV: str(weights_cache)})
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
