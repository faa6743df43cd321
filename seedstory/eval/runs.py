"""Evaluation runs in MLflow: how one is logged, how it is found again, and the table that compares them.

An evaluation run is tagged with the stage ``evaluate``, the alias it evaluated, the registered
versions it loaded (``lineage.<part>.model_version``), the dataset and the extractors' identities.
``find_evaluation`` goes from an alias to the newest run of the versions the alias names now, so
a moved alias never silently shows an older model's figures.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from seedstory.config import SeedStoryConfig
from seedstory.eval.image_metrics import IncomparableError
from seedstory.tracking import tracked_run
from seedstory.training.registry import ResolvedSource

STAGE = "evaluate"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EXTRACTOR_TAG = "seedstory.eval.extractor"
CLIP_TAG = "seedstory.eval.clip"
ALIAS_TAG = "seedstory.eval.alias"
PER_SEGMENT = "segment/"


def lineage_tags(sources: Mapping[str, ResolvedSource]) -> dict[str, str]:
    return {f"lineage.{name}.model_version": f"{s.model_name}/{s.version}" for name, s in sources.items() if s.version}


def flat_metrics(prefix: str, values: Mapping[str, float | None]) -> dict[str, float]:
    return {f"{prefix}{name}": value for name, value in values.items() if value is not None}


def overall_metrics(result: dict) -> dict[str, float]:
    """Every overall figure of one evaluated alias, under the names its MLflow run uses."""
    out = flat_metrics("", result["images"]["overall"])
    out.update(flat_metrics("truth/", result["images"]["truth"]))
    out.update(flat_metrics("toy/", result.get("toy", {}).get("overall", {})))
    for aspect, tally in result.get("judge", {}).items():
        out.update(flat_metrics(f"judge/{aspect}/", {"score": tally.get("mean_score"),
                                                     "parse_failures": tally["parse_failures"]}))
    return out


def per_segment_metrics(result: dict) -> dict[str, list[float | None]]:
    return {**result["images"]["per_segment"],
            **{f"toy_{name}": values for name, values in result.get("toy", {}).get("per_segment", {}).items()}}


def log_evaluation(config: SeedStoryConfig, alias: str, sources: Mapping[str, ResolvedSource], report: dict,
                   plot: bytes, storybooks: Mapping[str, bytes], pairwise: dict | None, compared_with: str | None) -> str:
    """One run for the versions behind ``alias``: figures, per-segment figures as steps, the report,
    the plot and a few storybook pages; with ``pairwise``, the judge's rates against ``compared_with``."""
    result = report["results"][alias]
    images = result["images"]
    tags = {**lineage_tags(sources), ALIAS_TAG: alias, "seedstory.eval.dataset": ",".join(config.data.test_jsonl),
            EXTRACTOR_TAG: f"{images['extractor']['name']}:{images['extractor']['digest']}",
            CLIP_TAG: f"{images['clip']['name']}:{images['clip']['digest']}"}
    if pairwise:
        tags["seedstory.eval.compared_with"] = compared_with
    versions = "+".join(tags[key] for key in sorted(lineage_tags(sources))) or alias
    with tracked_run(config.tracking, stage=STAGE, run_name=f"evaluate-{alias}-{versions}", params=config,
                     tags=tags) as run:
        mlflow.log_metrics(overall_metrics(result))
        curves = per_segment_metrics(result)
        for index in range(max(map(len, curves.values()), default=0)):
            mlflow.log_metrics({f"{PER_SEGMENT}{name}": values[index] for name, values in curves.items()
                                if index < len(values) and values[index] is not None}, step=index)
        for aspect, rates in (pairwise or {}).items():
            mlflow.log_metrics(flat_metrics(f"pairwise/{aspect}/", {
                "win_rate": rates.get("first_win_rate"), "loss_rate": rates.get("second_win_rate"),
                "tie_rate": rates.get("tie_rate"), "parse_failures": rates["parse_failures"]}))
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "eval.json").write_text(json.dumps(report, indent=1))
            Path(folder, "eval.png").write_bytes(plot)
            Path(folder, "storybooks").mkdir()
            for story_id, page in storybooks.items():
                Path(folder, "storybooks", f"{story_id}.html").write_bytes(page)
            mlflow.log_artifacts(folder)
        return run.info.run_id


def find_evaluation(client: MlflowClient, experiment: str, reference: str,
                    sources: Mapping[str, ResolvedSource] | None) -> Run:
    """A run id as is; an alias (``sources`` resolved from it) as the newest evaluation of exactly those versions."""
    if RUN_ID.match(reference):
        return client.get_run(reference)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment {experiment!r}: has jobs/evaluate.py run?")
    tags = lineage_tags(sources or {})
    query = " and ".join([f"tags.`seedstory.stage` = '{STAGE}'", "attributes.status = 'FINISHED'",
                          *(f"tags.`{key}` = '{value}'" for key, value in tags.items())])
    runs = client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        versions = ", ".join(tags.values()) or reference
        raise LookupError(f"no finished evaluation of {versions} (alias {reference!r}) in experiment {experiment!r}: "
                          f"run jobs/evaluate.py --alias {reference}")
    return runs[0]


def comparison_table(runs: Sequence[Run], labels: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """metric -> label -> value for the runs' overall metrics; runs measured by different extractors are refused."""
    for tag in (EXTRACTOR_TAG, CLIP_TAG):
        seen = {run.data.tags.get(tag) for run in runs}
        if len(seen) > 1:
            raise IncomparableError(f"these runs were measured with different extractors ({tag}: "
                                    f"{', '.join(sorted(map(str, seen)))}); evaluate them with the same eval.* config")
    names = sorted({name for run in runs for name in run.data.metrics if not name.startswith(PER_SEGMENT)})
    return {name: {label: run.data.metrics.get(name) for label, run in zip(labels, runs)} for name in names}


def format_table(table: Mapping[str, Mapping[str, float | None]], labels: Sequence[str]) -> str:
    width = max([len(name) for name in table] + [6])
    columns = [max(len(label), 10) for label in labels]
    lines = ["  ".join([f"{'metric':<{width}}", *(f"{label:>{w}}" for label, w in zip(labels, columns))])]
    for name, values in table.items():
        cells = [f"{values[label]:>{w}.4g}" if values[label] is not None else f"{'-':>{w}}"
                 for label, w in zip(labels, columns)]
        lines.append("  ".join([f"{name:<{width}}", *cells]))
    return "\n".join(lines)
