"""MLflow runs for every job: the flattened config as params, provenance as tags."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from pydantic import BaseModel

from seedstory.config.infra import TrackingConfig

MAX_PARAM_LENGTH = 6000


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; pydantic models and lists included."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    text = "null" if value is None else str(value)
    return {prefix: text[:MAX_PARAM_LENGTH]}


def git_commit() -> str:
    """The code's commit: from SEEDSTORY_GIT_COMMIT (set at submission), else from git, else 'unknown'."""
    if os.environ.get("SEEDSTORY_GIT_COMMIT"):
        return os.environ["SEEDSTORY_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _submission_id_of_ray_job() -> str | None:
    """Ray (2.60) hands a submitted job's driver its submission id only inside this JSON variable."""
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job_config:
        return None
    return json.loads(job_config).get("metadata", {}).get("job_submission_id")


def provenance_tags(stage: str) -> dict[str, str]:
    tags = {"seedstory.stage": stage, "mlflow.source.git.commit": git_commit()}
    job = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID") or _submission_id_of_ray_job()
    if job:
        tags["ray.job_id"] = job
    return tags


def use_tracking(config: TrackingConfig) -> str:
    """Point MLflow at the configured server (or MLFLOW_TRACKING_URI) and return the URI in use."""
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RuntimeError(
            "no MLflow tracking server: set tracking.tracking_uri in the config or MLFLOW_TRACKING_URI "
            "(the local stack writes it to .stack/env.sh)"
        )
    mlflow.set_tracking_uri(uri)
    return uri


@contextmanager
def tracked_run(config: TrackingConfig, *, stage: str, run_name: str | None, params: Any = None,
                tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in the configured experiment with params and provenance logged up front."""
    use_tracking(config)
    mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name=run_name, tags={**provenance_tags(stage), **(tags or {})}) as run:
        if params is not None:
            mlflow.log_params(flatten(params))
        yield run


def run_url(run: mlflow.ActiveRun) -> str:
    base = mlflow.get_tracking_uri().rstrip("/")
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
