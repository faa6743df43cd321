"""The story service on a Ray cluster of labelled nodes on this machine, run in a process of its own
(a ``ray.cluster_utils.Cluster`` needs a driver not yet connected to the session's Ray).

A CPU-less head, one node labelled ``writer`` and two labelled ``painter``, as the RayService's worker
groups are; the application built from the tiny config with two painter replicas. One story is
streamed over HTTP; at its first text the node of a painter replica is removed. Then, when
``RAY_REDIS_ADDRESS`` names a Redis (the head keeps its GCS tables there, as the RayService's
``gcsFaultToleranceOptions`` has it), the head's GCS is killed at a story's first text, a story is
told while it is down, and a story after it is restarted. Writes where each replica ran and every
story's events as JSON for ``test_multinode.py``.

    python -m tests.serving.multinode OUT.json PORT OVERRIDE...
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path

import ray
from ray import serve
from ray.cluster_utils import Cluster

from seedstory.config.serve import ROLE_LABEL
from seedstory.serving.app import build_app
from tests.conftest import REPO_ROOT

SCALE = ["serve.writer.max_replicas=1", "serve.painter.min_replicas=2", "serve.painter.max_replicas=2"]


def replicas() -> dict[str, dict[str, str]]:
    """deployment -> {actor id: node id} of its live replicas, read from the GCS's actor table (Ray's state
    API would need a dashboard, which this cluster does not start)."""
    placed: dict[str, dict[str, str]] = {}
    for actor_id, actor in ray._private.state.actors(actor_state_name="ALIVE").items():
        if actor["Name"].startswith("SERVE_REPLICA::seedstory#"):
            placed.setdefault(actor["Name"].split("#")[1], {})[actor_id] = actor["Address"]["NodeID"]
    return placed


def settled_replicas(lost_node: str, timeout_s: float = 180.0) -> dict[str, dict[str, str]]:
    """``replicas()`` once the lost node is dead and the writer and both painters are running, as the GCS
    and Serve's controller both see them. The GCS marks the node dead only after its health checks fail
    (until then its painter reads as alive), and its replacement is alive in the actor table while its
    models still load: a router that learns of a new replica looks its actor up in the GCS
    (``ray.get_actor``), so the GCS is killed only once no replica is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        placed = replicas()
        on_live_nodes = all(node in alive for actors in placed.values() for node in actors.values())
        deployments = serve.status().applications["seedstory"].deployments
        running = {name: deployments[name].replica_states for name in ("writer", "painter")}
        if (lost_node not in alive and on_live_nodes and len(placed.get("writer", {})) == 1
                and len(placed.get("painter", {})) == 2
                and running == {"writer": {"RUNNING": 1}, "painter": {"RUNNING": 2}}):
            return placed
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replicas never settled at one writer and two painters on live nodes "
                               f"(lost node {lost_node}): actors {placed}, Serve {running}")
        time.sleep(1)


def brief(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k in ("type", "index", "message", "status")} for e in events]


def stream(port: int, payload: dict, on_event=lambda event: None) -> list[dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        connection.request("POST", "/v1/stories", body=json.dumps(payload).encode(),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return [{"type": "http", "status": response.status, "body": response.read().decode()[:500]}]
        events = []
        while line := response.readline():
            events.append(json.loads(line))
            on_event(events[-1])
        return events
    finally:
        connection.close()


def main(out: Path, port: int, overrides: list[str]) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    roles = {"writer": cluster.add_node(num_cpus=2, labels={ROLE_LABEL: "writer"}),
             "painter-a": cluster.add_node(num_cpus=2, labels={ROLE_LABEL: "painter"}),
             "painter-b": cluster.add_node(num_cpus=2, labels={ROLE_LABEL: "painter"})}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    # One proxy, on the head: every node of this cluster shares the machine's loopback address.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app("tiny", [*overrides, *SCALE]), name="seedstory", route_prefix="/")
    node_roles = {node.node_id: role for role, node in roles.items()}
    placed = {name: [node_roles.get(node, "head") for node in actors.values()] for name, actors in replicas().items()}

    removed: list[str] = []

    def remove_a_painter_node(event: dict) -> None:
        if event["type"] == "text" and not removed:
            role = placed["painter"][0]
            cluster.remove_node(roles[role], allow_graceful=False)
            removed.append(role)

    started = time.monotonic()
    events = stream(port, {"text": "A fox paints.", "segments": 12, "seed": 1}, remove_a_painter_node)
    seconds = time.monotonic() - started
    settled = settled_replicas(roles[removed[0]].node_id)
    after = stream(port, {"text": "An owl paints after.", "segments": 3, "seed": 2})
    report = {"placed": placed, "removed": removed, "seconds": seconds, "events": brief(events),
              "after": [e["type"] for e in after]}
    if os.environ.get("RAY_REDIS_ADDRESS"):
        report["gcs"] = restart_the_gcs_under_stories(cluster, port, settled)
    out.write_text(json.dumps(report, indent=2))
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def restart_the_gcs_under_stories(cluster: Cluster, port: int, before: dict[str, dict[str, str]]) -> dict:
    """Kill the head's GCS at a story's first text, tell a whole story while it is down, restart it and
    tell one more; the replicas' actor ids before and after show whether the GCS came back with its
    tables or started empty."""
    killed: list[float] = []

    def kill_the_gcs(event: dict) -> None:
        if event["type"] == "text" and not killed:
            cluster.head_node.kill_gcs_server()
            killed.append(time.monotonic())

    interrupted = stream(port, {"text": "A hare paints as the head fails.", "segments": 6, "seed": 3}, kill_the_gcs)
    while_down = stream(port, {"text": "A crow paints with no head.", "segments": 3, "seed": 4})
    down_for = time.monotonic() - killed[0]
    cluster.head_node.start_gcs_server()
    restarted = stream(port, {"text": "A wolf paints once it is back.", "segments": 3, "seed": 5})
    return {"interrupted": brief(interrupted), "while_down": brief(while_down), "down_seconds": down_for,
            "restarted": brief(restarted), "replicas_before": before, "replicas_after": replicas()}


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
