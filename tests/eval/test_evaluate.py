"""jobs/evaluate.py through `ray job submit` on two aliases with the LLM judge on loopback, then `seedstory compare`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from seedstory import storage
from seedstory.cli.main import main as seedstory
from seedstory.data.toyworld.generate import write_toy_world
from tests.conftest import REPO_ROOT
from tests.eval.judge_server import JudgeServer, story_texts

pytestmark = pytest.mark.stack

RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "evaluation"


def verdict(body: dict) -> str:
    """Scores every story 7; in pairs, always prefers the first position (so no story truly wins)."""
    return "Consistent. [[7]]" if "score out of 10" in story_texts(body)[0] else "A is better. [[A]]"


@pytest.fixture(scope="module")
def evaluation(ray_head, story_models, weights_cache):
    root = f"s3://{ray_head.bucket}/evaluate-{uuid.uuid4().hex[:6]}"
    config = story_models.config
    toy = config.data.toy.model_copy(update={"stories": 8, "val_fraction": 0.0, "test_fraction": 0.4,
                                          "min_frames": 4, "max_frames": 6})
    summary = write_toy_world(toy, f"{root}/toy")
    client = MlflowClient()
    for part, stage in (("mllm", "story_instruct"), ("detokenizer", "detokenizer_adapt")):
        name = getattr(config.train, stage).registered_model
        client.set_registered_model_alias(name, "baseline", story_models.versions[part])
    with JudgeServer(default=verdict) as judge:
        judge_config = {"base_url": judge.base_url, "model": "judge-1", "api_key_env": None, "stories": 2,
                        "aspects": ["style", "engagement"], "backoff_s": 0.01}
        overrides = [*story_models.overrides, f"data.test_jsonl=[{summary['jsonl']['test']}]",
                     f"data.image_root={summary['image_root']}", f"tracking.experiment={EXPERIMENT}",
                     "eval.stories=2", "eval.segments=2", "eval.kid_subsets=5", f"eval.judge={json.dumps(judge_config)}"]
        runtime_env = {"env_vars": {"SEEDSTORY_WEIGHTS_CACHE": str(weights_cache), "HF_HUB_OFFLINE": "1"}}
        done = subprocess.run(
            [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT),
             "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/evaluate.py", "--config", "tiny",
             "--out", f"{root}/eval", "--compare-alias", "baseline", "--cpus-per-actor", "0.5", *overrides],
            capture_output=True, text=True, timeout=600,
        )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return {"report": json.loads(storage.read_bytes(f"{root}/eval/eval.json")), "stdout": done.stdout, "root": root,
            "overrides": overrides, "judge_requests": judge.requests}


def test_every_metric_is_reported_overall_and_per_segment_for_both_aliases(evaluation, story_models):
    report = evaluation["report"]
    assert set(report["results"]) == {"candidate", "baseline"}
    for result in report["results"].values():
        images = result["images"]
        assert set(images["overall"]) == {"fid", "kid", "kid_std", "clip_text_image", "clip_image_image"}
        assert images["overall"]["fid"] >= 0 and 0 <= images["overall"]["clip_image_image"] <= 1
        assert images["pictures"]["generated"] == 4 and images["extractor"]["name"] == "toy"
        assert 0 <= images["truth"]["clip_text_image"] <= 1
        assert all(len(values) == 2 for values in images["per_segment"].values())
        assert set(result["toy"]["overall"]) == {"validity", "coherence", "consistency"}
        assert result["judge"]["style"] == {"parse_failures": 0, "images_dropped": 0, "scored": 2, "mean_score": 7.0}
        assert result["models"]["mllm"]["version"] == story_models.versions["mllm"]
    assert report["comparison"]["table"]["fid"].keys() == {"candidate", "baseline"}


def test_the_pairwise_judge_asks_both_orders_and_calls_a_position_bias_a_tie(evaluation):
    pairwise = evaluation["report"]["comparison"]["pairwise"]
    for aspect in ("style", "engagement"):
        assert pairwise[aspect]["first_wins"] == pairwise[aspect]["second_wins"] == 0
        assert pairwise[aspect]["ties"] == pairwise[aspect]["inconsistent"] == 2
    # 2 aspects x 2 stories scored per alias, then 2 aspects x 2 stories x 2 orders
    assert len(evaluation["judge_requests"]) == 2 * 2 * 2 + 2 * 2 * 2
    assert "judge style: candidate wins 0%, baseline 0%, ties 100% (2 order-dependent, 0 unreadable)" in evaluation["stdout"]


def test_each_alias_has_a_run_with_lineage_steps_and_storybooks(evaluation, story_models):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.`seedstory.stage` = 'evaluate'",
                              order_by=["attributes.start_time DESC"], max_results=2)
    by_alias = {run.data.tags["seedstory.eval.alias"]: run for run in runs}
    assert set(by_alias) == {"candidate", "baseline"}
    run = by_alias["candidate"]
    name = story_models.config.train.story_instruct.registered_model
    assert run.data.tags["lineage.mllm.model_version"] == f"{name}/{story_models.versions['mllm']}"
    assert run.data.tags["seedstory.eval.extractor"].startswith("toy:")
    assert run.data.metrics["fid"] == pytest.approx(evaluation["report"]["results"]["candidate"]["images"]["overall"]["fid"])
    assert run.data.metrics["judge/style/score"] == 7.0 and run.data.metrics["pairwise/style/tie_rate"] == 1.0
    assert "pairwise/style/tie_rate" not in by_alias["baseline"].data.metrics
    steps = client.get_metric_history(run.info.run_id, "segment/clip_text_image")
    assert sorted(m.step for m in steps) == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"eval.json", "eval.png", "storybooks"}
    pages = {a.path for a in client.list_artifacts(run.info.run_id, "storybooks")}
    assert pages == {"storybooks/story-0001.html", "storybooks/story-0002.html"}


def test_compare_prints_the_table_of_runs_found_by_alias(evaluation, capsys):
    assert seedstory(["compare", "--json", "--config", "tiny", "candidate", "baseline", *evaluation["overrides"]]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["metrics"]["fid"] == {alias: pytest.approx(evaluation["report"]["results"][alias]["images"]["overall"]["fid"])
                                       for alias in ("candidate", "baseline")}
    assert not any(name.startswith("segment/") for name in table["metrics"])


def test_compare_refuses_runs_from_different_extractors_and_unknown_aliases(evaluation, capsys):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = []
    for extractor in ("toy:aaaa", "inception:bbbb"):
        run = client.create_run(experiment, tags={"seedstory.stage": "evaluate", "seedstory.eval.extractor": extractor})
        client.log_metric(run.info.run_id, "fid", 1.0)
        client.set_terminated(run.info.run_id)
        runs.append(run.info.run_id)
    assert seedstory(["compare", "--config", "tiny", *runs, *evaluation["overrides"]]) == 2
    assert "different extractors" in capsys.readouterr().err
    assert seedstory(["compare", "--config", "tiny", "no-such-alias", *evaluation["overrides"]]) == 2
    assert "no-such-alias" in capsys.readouterr().err
