"""The driver side of a stage job: one MLflow run around one Ray Train run, then the registry.

``start_stage`` resolves what the stage starts from (lineage), checks it before any worker
starts and opens the MLflow run (params = the resolved config, tags = provenance + lineage);
``StageRun.validation_set`` prepares the val split the loop evaluates on (or says validation is
off), ``StageRun.fit`` runs the shared loop on Ray Train with that run's id, ``register`` turns
the export into a model version with the ``candidate`` alias.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlflow
import ray.data
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from ray.train import Result
from transformers import PreTrainedTokenizerBase

from seedstory import storage
from seedstory.config import SeedStoryConfig
from seedstory.config.train import StageConfig
from seedstory.data.pipeline import DataReport, validation_set
from seedstory.data.streams import TrainStream
from seedstory.training.base_weights import with_base_weights
from seedstory.training.launcher import build_trainer, runs_uri
from seedstory.training.loop import LoopSpec
from seedstory.training.recipe import StageRecipe
from seedstory.training.registry import CANDIDATE, ResolvedSource, register_export, resolve_source
from seedstory.tracking import run_url, tracked_run, use_tracking

PROGRESS_LINES = 50


def train_run_name(config: SeedStoryConfig, stage: str) -> str:
    """``<train.run_name>-<stage>``: the same name resumes; without one, a fresh ``<time>-<hex>`` run name."""
    run_name = config.train.run_name or f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"
    return f"{run_name}-{stage}"


@dataclass
class StageRun:
    stage: str
    config: SeedStoryConfig
    recipe: type[StageRecipe]
    name: str
    sources: dict[str, ResolvedSource]
    client: MlflowClient
    mlflow_run: mlflow.ActiveRun
    lineage: dict[str, str] = field(default_factory=dict)
    result: Result | None = None
    version: ModelVersion | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def settings(self) -> StageConfig:
        return getattr(self.config.train, self.stage)

    @property
    def run_id(self) -> str:
        return self.mlflow_run.info.run_id

    @property
    def export_uri(self) -> str:
        return self.config.storage.uri("exports", self.name)

    @property
    def source_uris(self) -> dict[str, str]:
        return {name: source.uri for name, source in self.sources.items()}

    @property
    def finished(self) -> bool:
        """Whether training reached ``max_steps`` (a ``stop_at_step`` submission ends earlier, without export)."""
        return self.result is not None and self.result.metrics["step"] >= self.settings.max_steps

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """What the stage's samples are cut with (stage 3: its MLLM's own tokenizer)."""
        return self.recipe.tokenizer(self.config, self.source_uris)

    def log_data(self, report: DataReport, prefix: str = "data") -> None:
        mlflow.log_metrics(report.metrics(prefix))
        self.lines.append(f"{prefix + ':':<17}{report.log()}")

    def validation_set(self, tokenizer: PreTrainedTokenizerBase | None = None) -> ray.data.MaterializedDataset | None:
        """The val split for ``fit`` (its data metrics logged as ``val_data/*``), or None, said aloud,
        when ``train.<stage>.val_every`` is null."""
        if self.settings.val_every is None:
            notice = f"validation:      off (train.{self.stage}.val_every is null)"
            print(notice, flush=True)
            self.lines.append(notice)
            return None
        val, report = validation_set(self.stage, self.config, tokenizer)
        self.log_data(report, "val_data")
        return val

    def fit(self, stream: TrainStream, val: ray.data.Dataset | None = None) -> Result:
        spec = LoopSpec(recipe=self.recipe, config=self.config.model_dump(mode="json"),
                        export_uri=self.export_uri, stream=stream, sources=self.source_uris,
                        mlflow_tracking_uri=self.client.tracking_uri, mlflow_run_id=self.run_id,
                        log_every=max(1, self.settings.max_steps // PROGRESS_LINES))
        self.result = build_trainer(self.config, spec, self.name, val).fit()
        if self.result.checkpoint is None:
            raise RuntimeError(f"{self.name}: training ended without a checkpoint")
        checkpoint = self.result.checkpoint.path
        if storage.is_remote(runs_uri(self.config)):
            checkpoint = f"s3://{checkpoint}"
        mlflow.set_tag("seedstory.checkpoint_uri", checkpoint)
        self.lines.append(f"checkpoint:      {checkpoint}  (step {self.result.metrics['step']})")
        return self.result

    def register(self) -> ModelVersion | None:
        """The export as a new model version, alias ``candidate``; None when this submission stopped early."""
        if not self.finished:
            self.lines.append(f"stopped at step {self.result.metrics['step']}/{self.settings.max_steps}: re-submit "
                              f"with train.run_name={self.name.removesuffix('-' + self.stage)} to continue")
            return None
        mlflow.set_tag("seedstory.export_uri", self.export_uri)
        name = self.settings.registered_model
        self.version = register_export(self.client, name, self.export_uri, self.run_id,
                                       tags={"seedstory.stage": self.stage, **self.lineage})
        mlflow.set_tag("seedstory.model_version", f"{name}/{self.version.version}")
        base = self.client.tracking_uri.rstrip("/")
        self.lines.append(f"export:          {self.export_uri}")
        self.lines.append(f"model version:   models:/{name}/{self.version.version} (@{CANDIDATE})  "
                          f"{base}/#/models/{name}/versions/{self.version.version}")
        return self.version

    def where_to_look(self) -> str:
        return "\n".join(["", "where to look:", f"MLflow run:      {run_url(self.mlflow_run)}", *self.lines])


@contextmanager
def start_stage(recipe: type[StageRecipe], config: SeedStoryConfig) -> Iterator[StageRun]:
    """An MLflow run for ``recipe``'s stage with its inputs resolved and checked; the run ends with the block."""
    stage = recipe.STAGE
    config = with_base_weights(config)
    client = MlflowClient(use_tracking(config.tracking))
    sources = {name: resolve_source(client, reference)
               for name, reference in getattr(config.train, stage).sources.items()}
    recipe.check_inputs(config, {name: source.uri for name, source in sources.items()})
    lineage = {key: value for name, source in sources.items() for key, value in source.lineage(name).items()}
    if config.train.base_weights is not None:
        lineage["lineage.base_weights.uri"] = config.train.base_weights
    name = train_run_name(config, stage)
    with tracked_run(config.tracking, stage=stage, run_name=name, params=config,
                     tags={"seedstory.train_run": name, **lineage}) as active:
        if lineage:
            mlflow.log_params(lineage)
        yield StageRun(stage=stage, config=config, recipe=recipe, name=name, sources=sources, client=client,
                       mlflow_run=active, lineage=lineage)
