"""Where the batch job's actor pool runs, on a Ray cluster of two nodes on this machine, in a process of
its own (a ``ray.cluster_utils.Cluster`` needs a driver not yet connected to the session's Ray).

The driver's node (the head, 1 CPU) and a worker node (2 CPUs). Ray Data's actor pool, given
``actor_placement``'s options for local and remote paths, reports the node of each actor that wrote a
row. Writes the nodes and the refusal's message as JSON for ``test_batch.py``.

    python -m tests.generation.placement OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster


class WhereAmI:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        return {"node": [ray.get_runtime_context().get_node_id()] * len(batch["id"])}


def nodes(options: dict) -> list[str]:
    rows = ray.data.range(8).map_batches(WhereAmI, batch_size=1, num_cpus=0.5,
                                         compute=ray.data.ActorPoolStrategy(size=2), **options).take_all()
    return sorted({row["node"] for row in rows})


def main(out: Path) -> None:
    # Imported here, not above: every actor imports this module for WhereAmI, and the batch module brings torch.
    from seedstory.generation.batch import Prompt, actor_placement

    def prompt(image: str) -> Prompt:
        return Prompt(line=1, id="a", text="Tom waits.", image=image, segments=1, seed=None)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        try:
            actor_placement("/tmp/stories", [], actors=3, cpus_per_actor=0.5)
            refused = ""
        except ValueError as err:
            refused = str(err)
        report = {
            "driver": ray.get_runtime_context().get_node_id(), "worker": worker.node_id, "refused": refused,
            "remote": nodes(actor_placement("s3://b/stories", [prompt("s3://b/in/a.png")], 2, 0.5)),
            "local_out": nodes(actor_placement("/tmp/stories", [prompt("s3://b/in/a.png")], 2, 0.5)),
            "local_image": nodes(actor_placement("s3://b/stories", [prompt("/tmp/in/a.png")], 2, 0.5)),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
