"""A stage on a Ray cluster of several nodes on this machine, run in a process of its own (a
``ray.cluster_utils.Cluster`` needs a driver not yet connected to the session's Ray).

A head without CPUs and three one-CPU worker nodes; the regression stage's two workers strictly
spread, once uninterrupted and once losing a worker's node at its 6th step. Writes the workers'
nodes and the per-step losses of both runs as JSON for ``test_multinode.py`` to judge.

    python -m tests.training.multinode OUT.json BUCKET
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from tests.conftest import REPO_ROOT
from tests.training.test_loop import _config, _fit, _losses, _mlflow_run

STAGE = dict(zero_stage=2, max_steps=10, checkpoint_every=2, max_failures=2, placement_strategy="STRICT_SPREAD")


def nodes_of(log: Path) -> list[str]:
    """The nodes of the run's workers, in the order they started their first step."""
    return log.read_text().split()


def remove_the_named_node(cluster: Cluster, marker: Path, removal: dict, deadline: float) -> None:
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # both workers have reached the step and are waiting
    node_id = marker.read_text().strip()
    (node,) = [n for n in cluster.list_all_nodes() if n.node_id == node_id]
    cluster.remove_node(node, allow_graceful=False)
    removal["node"] = node_id


def main(out: Path, bucket: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    config = _config(bucket, **STAGE)
    report: dict = {"nodes": [n.node_id for n in cluster.list_all_nodes() if not n.head]}

    started = time.monotonic()
    whole, log = _mlflow_run("multinode-whole"), out.with_suffix(".whole")
    result, _ = _fit(config, f"multinode-whole-{uuid.uuid4().hex[:6]}", sources={"node_log": str(log)}, run_id=whole)
    report["whole"] = {"error": repr(result.error) if result.error else None, "losses": _losses(whole),
                       "worker_nodes": nodes_of(log), "seconds": time.monotonic() - started}

    started = time.monotonic()
    marker, removal, log = out.with_suffix(".node"), {}, out.with_suffix(".lost")
    remover = threading.Thread(target=remove_the_named_node, args=(cluster, marker, removal, time.monotonic() + 240))
    remover.start()
    lost = _mlflow_run("multinode-node-lost")
    result, _ = _fit(config, f"multinode-lost-{uuid.uuid4().hex[:6]}",
                     sources={"node_loss_marker": str(marker), "node_log": str(log)}, run_id=lost)
    remover.join()
    nodes = nodes_of(log)
    report["node_lost"] = {"error": repr(result.error) if result.error else None, "losses": _losses(lost),
                           "checkpoint": result.checkpoint.path if result.checkpoint else None,
                           "removed": removal.get("node"), "nodes_before": nodes[:2], "nodes_after": nodes[2:],
                           "seconds": time.monotonic() - started}
    out.write_text(json.dumps(report, indent=2))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
