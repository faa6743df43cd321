"""A training stage across Ray nodes: strictly spread, and surviving the loss of a node mid-run.

The cluster (a CPU-less head and three worker nodes on this machine) runs in a process of its
own: see ``tests/training/multinode.py``. Object storage and MLflow are the session's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def report(mlflow_server, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("multinode") / "report.json"
    done = subprocess.run([sys.executable, "-m", "tests.training.multinode", str(out), mlflow_server.bucket],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def test_the_workers_of_a_strictly_spread_stage_run_on_two_nodes(report):
    whole = report["whole"]
    assert whole["error"] is None
    nodes = whole["worker_nodes"]
    assert len(nodes) == len(set(nodes)) == 2 and set(nodes) <= set(report["nodes"]), nodes
    assert sorted(int(step) for step in whole["losses"]) == list(range(1, 11))


def test_a_lost_node_costs_a_restart_from_the_last_checkpoint_not_the_run(report):
    lost, whole = report["node_lost"], report["whole"]
    assert lost["error"] is None and lost["checkpoint"].endswith("step-00000010")
    removed, before, after = lost["removed"], lost["nodes_before"], lost["nodes_after"]
    assert removed in before and len(set(before)) == 2, "the removed node ran a worker of the stage"
    assert len(set(after)) == 2 and removed not in after, "the restarted workers spread over the nodes left"
    losses, reference = lost["losses"], whole["losses"]
    assert sorted(int(step) for step in losses) == list(range(1, 11))
    for step in losses:
        assert losses[step] == pytest.approx(reference[step], rel=0.02), (step, losses, reference)
