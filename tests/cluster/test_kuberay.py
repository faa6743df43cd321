"""The KubeRay manifests: valid against KubeRay 1.7's CRDs, true to the operator's rules, and runnable.

Every committed resource and every rendered kustomization is checked against the CRD's schema;
then the rules the schema cannot express, and what makes a manifest run here: the image, the
jobs and arguments each entrypoint names, the mounted config, and a service that serves exactly
the committed serve config.
"""

from __future__ import annotations

import importlib.util
import shlex
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from seedstory.config import load_config
from seedstory.config.serve import ROLE_LABEL
from seedstory.data.toyworld.generate import split_of
from seedstory.serving.app import deployment_options
from tests.cluster.kuberay import (
    CONFIG_MOUNT, CRD_FILES, IMAGE_ROOT, KUSTOMIZATIONS, as_json_schema, cluster_specs, config_file,
    kubectl, pod_templates, raw_manifests, rendered, schema_errors,
)
from tests.conftest import REPO_ROOT

needs_kubectl = pytest.mark.skipif(kubectl() is None, reason="rendering overlays needs kubectl (kubectl kustomize)")
STAGES = {"detokenizer_pretrain", "story_instruct", "detokenizer_adapt"}


@cache
def job_arguments(job: str):
    spec = importlib.util.spec_from_file_location(f"job_{job}", REPO_ROOT / "jobs" / f"{job}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.arguments()


def test_the_schema_conversion_keeps_kubernetes_meanings():
    converted = as_json_schema({"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
    }})
    check = jsonschema.Draft7Validator(converted)
    assert check.is_valid({"port": 8000, "note": None, "free": {"a": "x", "b": 1}})
    assert check.is_valid({"port": "http"})
    assert not check.is_valid({"port": 1.5})
    assert not check.is_valid({"prot": 8000})  # a typo is refused, as strict field validation refuses it


def test_a_misspelt_field_fails_the_real_schema():
    (path, document) = next((p, d) for p, d in raw_manifests() if d["kind"] == "RayJob")
    document = dict(document, spec=dict(document["spec"], shutdownAfterJobFinish=True))
    assert any("shutdownAfterJobFinish" in e for e in schema_errors(document)), path


@pytest.mark.parametrize("path,document", raw_manifests(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_committed_manifest_is_valid(path, document):
    assert {"apiVersion", "kind", "metadata"} <= document.keys(), path
    if document["kind"] in CRD_FILES:
        assert document["apiVersion"] == "ray.io/v1", path
        assert schema_errors(document) == [], path


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_kustomization_is_valid_and_follows_the_operator_rules(kustomization):
    documents = rendered(kustomization)
    kinds = [d["kind"] for d in documents]
    assert {"RayCluster", "RayService", "RayJob", "ConfigMap"} <= set(kinds), kinds
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    for document in documents:
        if document["kind"] not in CRD_FILES:
            continue
        where = f"{kustomization}: {document['kind']}/{document['metadata']['name']}"
        assert schema_errors(document) == [], where
        if document["kind"] == "RayJob":
            spec = document["spec"]
            assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0, where
            assert "ttlSecondsAfterFinished" not in spec or spec["shutdownAfterJobFinishes"], where
        for cluster in cluster_specs(document):
            assert cluster["rayVersion"] == ray.__version__, where
            groups = cluster.get("workerGroupSpecs", [])
            assert len({g["groupName"] for g in groups}) == len(groups), where
            for group in groups:
                replicas = (group["minReplicas"], group["replicas"], group["maxReplicas"])
                assert 0 <= replicas[0] <= replicas[1] <= replicas[2], (where, group["groupName"])
                assert not ("labels" in group and "labels" in group["rayStartParams"]), where
            v2 = cluster.get("autoscalerOptions", {}).get("version") == "v2"
            assert not v2 or cluster.get("enableInTreeAutoscaling"), where
            for template in pod_templates(cluster):
                spec = template["spec"]
                assert not v2 or spec.get("restartPolicy") == "Never", f"{where}: autoscaler v2 pods never restart"
                for container in spec["containers"]:
                    name, tag = container["image"].rsplit(":", 1)
                    assert name.endswith("seedstory") and f"ray{ray.__version__}" in tag, (where, container["image"])
                    for source in container.get("envFrom", []):
                        ref = source.get("configMapRef")
                        assert not ref or ("ConfigMap", ref["name"]) in names, (where, ref)
                for volume in spec.get("volumes", []):
                    if "configMap" in volume:
                        assert ("ConfigMap", volume["configMap"]["name"]) in names, (where, volume)


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_entrypoint_names_a_job_that_takes_its_arguments(kustomization, tmp_path):
    documents = rendered(kustomization)
    config_path = config_file(documents, tmp_path)
    config = load_config(str(config_path))
    jobs = [d for d in documents if d["kind"] == "RayJob"]
    assert jobs
    for document in jobs:
        python, script, *argv = shlex.split(document["spec"]["entrypoint"])
        assert python == "python" and script.startswith(IMAGE_ROOT), script
        job = Path(script[len(IMAGE_ROOT):])
        assert (REPO_ROOT / job).is_file() and job.parent == Path("jobs"), script
        args = job_arguments(job.stem).parse_args(argv)
        assert args.config == CONFIG_MOUNT
        mounted = load_config(str(config_path), args.overrides)
        if job.stem == "evaluate_toy":
            toy = mounted.data.toy
            held_out = sum(split_of(toy, index) == "test" for index in range(toy.stories))
            assert args.stories <= held_out, f"{script} asks for {args.stories} test stories; the world deals {held_out}"
        if job.stem in STAGES:
            assert mounted.train.run_name == document["metadata"]["name"], "a retried stage must resume its own run"
            cluster = document["spec"]["rayClusterSpec"]
            (group,) = cluster["workerGroupSpecs"]
            stage = getattr(config.train, job.stem)
            container = group["template"]["spec"]["containers"][0]
            assert group["replicas"] == group["maxReplicas"] == stage.num_workers, (job, "one pod per Ray Train worker")
            assert float(container["resources"]["requests"]["cpu"]) >= stage.cpus_per_worker
            gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
            assert gpus == (1 if stage.use_gpu else 0), (job, gpus)
        head = document["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mounts = {m["mountPath"] for c in head["containers"] for m in c.get("volumeMounts", [])}
        assert str(Path(CONFIG_MOUNT).parent) in mounts, "the entrypoint runs on the head: it reads the config there"


def _service(documents: tuple[dict, ...]) -> tuple[dict, dict]:
    (service,) = [d for d in documents if d["kind"] == "RayService"]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    return service, serve_config


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_service_serves_the_committed_serve_config(kustomization, tmp_path):
    """serve/config.yaml, but with the proxy on the pod's interfaces, the models of the mounted config and
    each deployment's options (replicas, resources, placement) from that config's serve section."""
    documents = rendered(kustomization)
    config = load_config(str(config_file(documents, tmp_path)))
    _, served = _service(documents)
    committed = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    assert served["http_options"] == {**committed["http_options"], "host": "0.0.0.0"}
    assert {k: v for k, v in served.items() if k not in ("applications", "http_options")} == \
        {k: v for k, v in committed.items() if k not in ("applications", "http_options")}
    (app,), (committed_app,) = served["applications"], committed["applications"]
    assert {k: v for k, v in app.items() if k != "deployments"} == \
        {k: v for k, v in committed_app.items() if k != "deployments"}
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in committed_app["deployments"]]
    for deployment in app["deployments"]:
        user_config = {**deployment["user_config"]}
        assert user_config.pop("config") == CONFIG_MOUNT
        assert user_config == {k: v for k, v in committed_app["deployments"][0]["user_config"].items() if k != "config"}
        expected = deployment_options(getattr(config.serve, deployment["name"]), deployment["user_config"])
        assert deployment == {"name": deployment["name"], **expected}, deployment["name"]


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_writer_and_painter_scale_on_their_own_worker_groups(kustomization):
    service, served = _service(rendered(kustomization))
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    deployments = {d["name"]: d for d in served["applications"][0]["deployments"]}
    for role, other in (("writer", "painter"), ("painter", "writer")):
        group, deployment = groups[role], deployments[role]
        assert group["labels"] == {ROLE_LABEL: role}
        selector = deployment["ray_actor_options"]["label_selector"]
        assert selector == {ROLE_LABEL: f"!{other}"}, "a role's replicas stay off the other role's nodes"
        pod_gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        replica_gpus = deployment["ray_actor_options"]["num_gpus"]
        assert pod_gpus >= replica_gpus
        per_pod = pod_gpus // replica_gpus if replica_gpus else deployment["autoscaling_config"]["max_replicas"]
        assert group["maxReplicas"] * per_pod >= deployment["autoscaling_config"]["max_replicas"], role
    fault_tolerance = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert fault_tolerance["redisAddress"] and fault_tolerance["redisPassword"]["valueFrom"]["secretKeyRef"]
