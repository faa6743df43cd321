"""The toy-world evaluation: score arithmetic, and jobs/evaluate_toy.py end to end through `ray job submit`."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from seedstory import storage
from seedstory.config import load_config
from seedstory.config.data import ToyWorldConfig
from seedstory.data.toyworld.generate import toy_story, write_toy_world
from seedstory.data.toyworld.judge import Judge
from seedstory.data.toyworld.render import render_frame
from seedstory.eval.toy_world import (beyond_training_length, cast_sizes, characters_named, clear_leader,
                                      judge_pictures, leads_over, overall, paint, per_segment)
from seedstory.generation.pipeline import to_image
from seedstory.models.detokenizer import build_detokenizer
from tests.conftest import REPO_ROOT

RAY = str(Path(sys.executable).parent / "ray")


def test_pictures_are_painted_with_the_evaluated_configs_sampler_not_the_exported_one():
    tiny = load_config("tiny").model
    torch.manual_seed(0)
    detokenizer = build_detokenizer(tiny).eval()  # exported with guidance 1
    features = torch.randn(2, tiny.vit.num_queries, tiny.vit.output_dim, generator=torch.Generator().manual_seed(0))
    guided = tiny.scheduler.model_copy(update={"guidance_scale": 3.0, "inference_steps": 2})
    painted = paint(detokenizer, features, guided)
    expected = detokenizer.decode(features, steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=3.0)
    assert len(painted) == 2
    assert all(np.array_equal(np.asarray(image), np.asarray(to_image(p))) for image, p in zip(painted, expected))
    unguided = paint(detokenizer, features, guided.model_copy(update={"guidance_scale": 1.0}))
    assert not np.array_equal(np.asarray(unguided[0]), np.asarray(painted[0]))


def test_judged_pictures_count_their_wrong_facts_against_the_characters_their_captions_state():
    world = ToyWorldConfig(stories=4, min_frames=8, max_frames=12, seed=3)
    story = toy_story(world, 0)
    frames = [render_frame(state, world.image_size) for state in story.states]
    captions = list(story.record.captions)
    judge = Judge(world.image_size)
    stated = sum(len(state.cast) for state in story.states)
    right = judge_pictures(judge, frames, captions)
    assert right.coherence == [1.0] * len(frames)
    assert right.errors == {"pictures": len(frames), "characters": stated, "scene": 0, "missing": 0, "position": 0,
                            "size": 0, "extra": 0}
    late = judge_pictures(judge, frames[:-1], captions[1:])  # each picture a frame behind its caption
    assert late.coherence == [judge.coherence(image, caption) for image, caption in zip(frames, captions[1:])]
    wrong = sum(late.errors[kind] for kind in ("scene", "missing", "position", "size", "extra"))
    assert late.errors["pictures"] == len(frames) - 1 and wrong >= len(frames) - 1  # the world changes every frame
    with pytest.raises(ValueError):
        judge_pictures(judge, frames, captions[1:])


def test_per_segment_means_count_the_stories_that_reached_each_segment():
    runs = [{"validity": [1.0, 0.0, 1.0], "coherence": [0.5, 0.5, 0.5], "consistency": [1.0, 1.0, 0.0]},
            {"validity": [0.0], "coherence": [1.0], "consistency": [0.0]}]
    curves = per_segment(runs, 4)
    assert curves["validity"] == [0.5, 0.0, 1.0, None] and curves["coherence"][:2] == [0.75, 0.5]


def test_variants_are_compared_only_past_the_training_length():
    curves = {"dense": {"validity": [1.0, 1.0, 0.0, None], "coherence": [1.0, 1.0, 0.5, None]},
              "mm-sink/absolute": {"validity": [0.0, 0.0, 1.0, 1.0], "coherence": [0.0, 0.0, 1.0, 0.5]}}
    # Windows of 3 frames train segments 0 and 1 (frames 1 and 2 after the opening): segment 2 is past them.
    assert beyond_training_length(curves, 3) == {"dense": 0.25, "mm-sink/absolute": 0.875}
    assert beyond_training_length(curves, 4) == {"mm-sink/absolute": 0.75}  # dense stopped at segment 3
    assert beyond_training_length(curves, 5) == {}


def test_a_clear_leader_leads_the_default_by_more_than_two_standard_errors():
    def curve(values: list[float | None]) -> dict[str, list[float | None]]:
        return {"validity": values, "coherence": values}

    curves = {"window": curve([0.9, 0.5, 0.5, 0.5, 0.5]),
              "steady": curve([0.0, 0.6, 0.62, 0.61, 0.6]),  # +0.1 past the first segment, little spread
              "noisy": curve([0.0, 0.8, 0.3, 0.8, 0.3]),  # +0.05 on average, standard error 0.144
              "stopped": curve([1.0, 1.0, None, None, None])}
    leads = leads_over(curves, "window", 2)
    assert set(leads) == {"steady", "noisy"}  # no variant is compared with itself or on one segment
    assert leads["steady"]["difference"] == pytest.approx(0.1075)
    assert leads["noisy"] == pytest.approx({"difference": 0.05, "standard_error": 0.5 / np.sqrt(3) / 2})
    assert clear_leader(leads) == "steady"
    del leads["steady"]
    assert clear_leader(leads) is None  # noisy leads, but by a third of a standard error
    assert leads_over(curves, "dense", 2) == {}


def test_overall_scores_a_story_that_ended_early_zero_for_what_it_missed():
    runs = [{"validity": [1.0, 1.0], "coherence": [1.0, 1.0], "consistency": [1.0, 1.0]},
            {"validity": [1.0], "coherence": [1.0], "consistency": [1.0]}]
    assert overall(runs, 2) == {"validity": 0.75, "coherence": 0.75, "consistency": 0.75}
    assert overall(runs, 4) == {"validity": 0.375, "coherence": 0.375, "consistency": 0.375}  # all ended early
    with pytest.raises(ValueError, match="more than the 1 segments"):
        overall(runs, 1)


def test_a_caption_names_the_characters_on_stage():
    config = ToyWorldConfig(seed=3)
    for index in range(6):
        story = toy_story(config, index)
        assert [characters_named(c) for c in story.record.captions] == [len(s.cast) for s in story.states]


def test_cast_sizes_count_characters_and_the_validity_of_each_kind():
    assert cast_sizes([1, 2, 1, 3], [1.0, 0.0, 0.0, 1.0]) == {
        "characters_per_caption": 1.75, "one_character_share": 0.5, "valid_one_character": 0.5,
        "valid_more_characters": 0.5}
    assert cast_sizes([0, 1, 2, 3]) == {"characters_per_caption": 1.5, "one_character_share": 0.5}
    assert cast_sizes([2, 3], [1.0, 0.0])["valid_one_character"] is None
    with pytest.raises(ValueError, match="2 captions but 1 verdicts"):
        cast_sizes([1, 2], [1.0])
    assert cast_sizes([], []) == dict.fromkeys(("characters_per_caption", "one_character_share", "valid_one_character",
                                                 "valid_more_characters"))


@pytest.mark.parametrize("flag", ["--stories", "--segments", "--threads"])
def test_evaluate_toy_refuses_a_count_below_one_before_loading_anything(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.setattr(sys, "argv", ["evaluate_toy.py", "--config", "tiny", "--out", str(tmp_path), flag, "0"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "jobs" / "evaluate_toy.py"), run_name="__main__")
    assert exited.value.code == 2 and f"{flag} must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.stack
def test_evaluate_toy_job_writes_its_figures_and_logs_them_to_mlflow(ray_head, story_models, weights_cache):
    root = f"s3://{ray_head.bucket}/toy-eval-{uuid.uuid4().hex[:6]}"
    toy = story_models.config.data.toy.model_copy(update={"stories": 8, "val_fraction": 0.0, "test_fraction": 0.4,
                                                           "max_frames": 12})
    summary = write_toy_world(toy, f"{root}/toy")
    overrides = [*story_models.overrides, f"data.test_jsonl=[{summary['jsonl']['test']}]",
                 f"data.image_root={summary['image_root']}", "data.window_frames=2", "tracking.experiment=toy-eval",
                 "model.scheduler.guidance_scale=2.0"]
    runtime_env = {"env_vars": {"SEEDSTORY_WEIGHTS_CACHE": str(weights_cache), "HF_HUB_OFFLINE": "1"}}
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/evaluate_toy.py", "--config", "tiny",
         "--out", f"{root}/eval", "--stories", "2", "--segments", "2", "--long-segments", "4", "--threads", "1",
         *overrides],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    result = json.loads(storage.read_bytes(f"{root}/eval/toy_eval.json"))
    assert set(result["targets"]) == {"detokenizer_coherence", "teacher_forced_coherence", "free_validity",
                                      "free_coherence", "free_consistency"}
    assert all(0.0 <= target["value"] <= 1.0 for target in result["targets"].values())
    assert set(result["errors"]) == {"detokenizer", "adapted_detokenizer", "teacher_forced"}
    assert result["errors"]["teacher_forced"]["pictures"] == 2  # two stories, the second frame of each
    assert result["errors"]["detokenizer"]["pictures"] == 4 and result["errors"]["detokenizer"]["characters"] > 0
    assert "teacher_forced: 2 pictures of " in done.stdout
    written, true = result["cast"]["written"], result["cast"]["true"]
    assert 0 <= written["characters_per_caption"] <= 3 and 1 <= true["characters_per_caption"] <= 3
    assert set(written) == {"characters_per_caption", "one_character_share", "valid_one_character",
                            "valid_more_characters"} and set(true) == {"characters_per_caption", "one_character_share"}
    assert f"the test stories' own {true['characters_per_caption']:.2f}" in done.stdout
    for name, target in result["targets"].items():
        assert f"{'PASS' if target['ok'] else 'MISS'} {name}" in done.stdout
    variants = {"dense", "window", "sink/absolute", "sink/rerotate", "mm-sink/absolute", "mm-sink/rerotate"}
    assert set(result["attention"]["per_segment"]) == variants and result["attention"]["best"] in variants
    default = story_models.config.story.cache
    assert set(result["attention"]["lead_over_default"]) == variants - {f"{default.mode}/{default.positions}"}
    leader = result["attention"]["clear_leader"]
    assert (f"{leader} leads " if leader else "no variant leads ") in done.stdout
    assert all(len(curve["validity"]) == 4 for curve in result["attention"]["per_segment"].values())
    assert result["config"]["stories"] == 2 and result["models"]["mllm"]["version"] == story_models.versions["mllm"]
    assert result["config"]["sampler"] == {"steps": story_models.config.model.scheduler.inference_steps,
                                           "guidance_scale": 2.0}
    assert storage.read_bytes(f"{root}/eval/toy_eval.png").startswith(b"\x89PNG")

    client = MlflowClient()
    experiment = client.get_experiment_by_name("toy-eval")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.tags["seedstory.stage"] == "evaluate_toy"
    assert run.data.metrics["toy/free_validity"] == pytest.approx(result["figures"]["free_validity"])
    steps = client.get_metric_history(run.info.run_id, "toy/mm-sink/absolute/coherence")
    assert sorted(m.step for m in steps) == [0, 1, 2, 3]
    assert run.data.metrics["toy/errors/teacher_forced/position"] == result["errors"]["teacher_forced"]["position"]
    assert run.data.metrics["toy/cast/true/characters_per_caption"] == pytest.approx(true["characters_per_caption"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"toy_eval.json", "toy_eval.png"}
