"""The shipped cluster manifests parse and pin the Ray version the project is built on."""

from pathlib import Path

import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_kuberay_manifests_pin_the_installed_ray():
    manifests = sorted(CLUSTER.glob("kuberay/*.yaml"))
    assert manifests
    for path in manifests:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            if doc["kind"] == "RayCluster":
                assert doc["spec"]["rayVersion"] == ray.__version__, path
                images = [c["image"] for g in [doc["spec"]["headGroupSpec"], *doc["spec"]["workerGroupSpecs"]]
                          for c in g["template"]["spec"]["containers"]]
                assert all(f":{ray.__version__}-" in image for image in images), images
