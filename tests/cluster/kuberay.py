"""The KubeRay manifests as the operator would receive them: each kustomization rendered by kubectl, and
checked against the CRDs' OpenAPI schemas the way the API server applies them."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.conftest import REPO_ROOT

KUBERAY = REPO_ROOT / "cluster" / "kuberay"
CRDS = Path(__file__).parent / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
KUSTOMIZATIONS = ("base", "overlays/cpu-smoke", "overlays/gpu")
CONFIG_MOUNT = "/etc/seedstory/seedstory.yaml"
IMAGE_ROOT = "/home/ray/seedstory/"


def as_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, with Kubernetes' meanings made explicit.

    ``x-kubernetes-int-or-string`` admits an integer or a string; ``nullable`` admits null;
    ``x-kubernetes-preserve-unknown-fields`` keeps unknown fields, and every other object with
    declared properties refuses them, as ``kubectl apply``'s strict field validation does.
    """
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: as_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")
              and key != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = as_json_schema(version["schema"]["openAPIV3Schema"])
    # The API server fills apiVersion/kind/metadata itself; metadata is checked as ObjectMeta elsewhere.
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(document["kind"]).iter_errors(document)]


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def rendered(kustomization: str) -> tuple[dict, ...]:
    """``kubectl kustomize`` of a kustomization, offline."""
    done = subprocess.run([kubectl(), "kustomize", str(KUBERAY / kustomization)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def raw_manifests() -> list[tuple[Path, dict]]:
    """Every resource file under cluster/kuberay, as committed (kustomizations and patches aside)."""
    patches = {(path.parent / patch["path"]).resolve() for path in KUBERAY.rglob("kustomization.yaml")
               for patch in yaml.safe_load(path.read_text()).get("patches", []) if "path" in patch}
    found = []
    for path in sorted(set(KUBERAY.rglob("*.yaml")) - patches):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") in (*CRD_FILES, "ConfigMap", "Namespace"):
                found.append((path, document))
    return found


def cluster_specs(document: dict) -> list[dict]:
    """The RayCluster spec inside any Ray resource."""
    spec = document["spec"]
    return {"RayCluster": [spec], "RayJob": [spec.get("rayClusterSpec")],
            "RayService": [spec.get("rayClusterConfig")]}.get(document["kind"], [])


def pod_templates(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


def config_file(documents: tuple[dict, ...], directory: Path) -> Path:
    """The rendered seedstory-config ConfigMap's file, written where a test can load it."""
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "seedstory-config"]
    path = directory / "seedstory.yaml"
    path.write_text(config_map["data"]["seedstory.yaml"])
    return path
