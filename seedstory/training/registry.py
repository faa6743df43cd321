"""Exports as MLflow model versions: registration with an alias, and resolving what a stage starts from.

A model version's ``source`` is the export folder on object storage (its ecosystem formats,
not an MLflow flavour), its ``run_id`` the stage run that trained it. Stages name what they
start from as ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a plain URI; the
resolved version, its run and its folder are recorded on the new run as lineage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode,
)

from seedstory import storage
from seedstory.models.export import MANIFEST

CANDIDATE = "candidate"
MODEL_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
# What the registry answers for a model, version or alias it does not hold (a missing alias is a bad parameter).
NOT_REGISTERED = {ErrorCode.Name(code) for code in (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE)}


class IncompleteExportError(RuntimeError):
    """An export folder without its manifest: interrupted, or still being written."""


@dataclass(frozen=True)
class ResolvedSource:
    """Where a stage input lives, and which registered version and run it came from (when registered)."""

    reference: str
    uri: str
    model_name: str | None = None
    version: str | None = None
    run_id: str | None = None

    def lineage(self, name: str) -> dict[str, str]:
        """Tags/params for the run that starts from this source, all under ``lineage.<name>.``."""
        out = {f"lineage.{name}.reference": self.reference, f"lineage.{name}.uri": self.uri}
        if self.model_name is not None:
            out[f"lineage.{name}.model_version"] = f"{self.model_name}/{self.version}"
        if self.run_id:
            out[f"lineage.{name}.run_id"] = self.run_id
        return out


def resolve_source(client: MlflowClient, reference: str) -> ResolvedSource:
    """``models:/name@alias`` or ``models:/name/version`` through the registry; any other string is a URI."""
    if not reference.startswith("models:/"):
        return ResolvedSource(reference=reference, uri=reference)
    match = MODEL_REF.match(reference)
    if match is None:
        raise ValueError(f"{reference!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code not in NOT_REGISTERED:
            raise  # the registry did not answer: not a question of which models exist
        raise LookupError(f"{reference}: no such registered model version in {client.tracking_uri} "
                          f"(has the stage that registers {name!r} run?): {err.message}") from err
    return ResolvedSource(reference=reference, uri=found.source, model_name=name, version=found.version,
                          run_id=found.run_id)


def register_export(client: MlflowClient, name: str, uri: str, run_id: str, tags: dict[str, str] | None = None,
                    alias: str = CANDIDATE) -> ModelVersion:
    """A new version of ``name`` whose source is the export folder ``uri``; ``alias`` moves to it.

    A folder without its manifest (an export that never finished) is refused.
    """
    fs, manifest = storage.filesystem_for(storage.join(uri, MANIFEST))
    fs.invalidate_cache(manifest)
    if not fs.exists(manifest):
        raise IncompleteExportError(f"{uri} holds no {MANIFEST}: the export did not finish, so it is not registered")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(name, source=uri, run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return version
