"""Batch generation: prompt lines checked on the driver, a Ray Data actor pool writing storybooks."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from seedstory import storage
from seedstory.data.images import encode_image
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.render import render_frame
from seedstory.generation.batch import prepare_prompts, prompts_folder, read_prompt_lines
from tests.conftest import REPO_ROOT

RAY = str(Path(sys.executable).parent / "ray")


def _lines(*texts: str | bytes) -> list[dict]:
    return [{"line": n, "text": t if isinstance(t, bytes) else t.encode()} for n, t in enumerate(texts, start=1)]


def test_prompts_are_parsed_with_defaults_and_relative_images():
    prompts, bad = prepare_prompts(_lines('{"text": "Tom waits.", "image": "a.png", "id": "first"}',
                                          '{"text": "Mia runs.", "segments": 3, "seed": 7}'), "s3://b/prompts", 5, 10)
    assert bad == []
    assert (prompts[0].id, prompts[0].image, prompts[0].segments, prompts[0].seed) == ("first", "s3://b/prompts/a.png", 5, None)
    assert (prompts[1].id, prompts[1].image, prompts[1].segments, prompts[1].seed) == ("line-000002", None, 3, 7)


def test_relative_images_are_read_from_the_prompts_files_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prompts_folder("prompts.jsonl") == str(tmp_path)
    assert prompts_folder("in/prompts.jsonl") == str(tmp_path / "in")
    assert prompts_folder("s3://b/in/prompts.jsonl") == "s3://b/in"
    prompts, _ = prepare_prompts(_lines('{"text": "Tom waits.", "image": "a.png"}'), prompts_folder("prompts.jsonl"), 1, 10)
    assert prompts[0].image == f"{tmp_path}/a.png"


def test_every_bad_prompt_is_named_with_its_line():
    prompts, bad = prepare_prompts(_lines(
        '{"text": "ok", "id": "a"}', "{not json", '{"image": "x.png"}', '{"text": "x", "segments": 0}',
        '{"text": "x", "id": "a"}', '{"text": "x", "id": "../up"}', '{"text": "x", "colour": 1}', '["x"]',
        '{"text": "x", "seed": 4294967296}', b'{"text": "caf\xe9"}', '{"text": "x", "id": "summary.json"}',
        '{"text": "x", "image": ""}', '{"text": "x", "id": null}', '{"text": "x", "segments": 11}',
        '{"text": "x", "segments": 10}',
    ), "/p", 2, 10)
    assert [p.id for p in prompts] == ["a", "line-000013", "line-000015"]
    details = {entry["line"]: entry["detail"] for entry in bad}
    assert details[2].startswith("not JSON") and details[3] == "text: missing or empty"
    assert details[4] == "segments: must be an integer in [1, 10], got 0"
    assert details[14] == "segments: must be an integer in [1, 10], got 11"
    assert details[5] == "id: 'a' is already used by line 1" and details[6].startswith("id: '../up'")
    assert details[7] == "unknown field(s) colour" and details[8].startswith("a prompt is a JSON object")
    assert details[9] == "seed: must be an integer in [0, 4294967296), got 4294967296"
    assert details[10] == "not UTF-8: byte 14 is b'\\xe9'"
    assert details[11] == "id: 'summary.json' is the name of the run's summary"
    assert details[12] == "image: must be a path or URI, got ''"


def test_prompt_lines_are_decoded_one_by_one(tmp_path):
    (tmp_path / "prompts.jsonl").write_bytes(b'{"text": "caf\xe9"}\n\n  \n{"text": "ok"}\r\n')
    lines = read_prompt_lines(str(tmp_path / "prompts.jsonl"))
    assert lines == [{"line": 1, "text": b'{"text": "caf\xe9"}'}, {"line": 4, "text": b'{"text": "ok"}'}]


@pytest.mark.parametrize("flags, shown", [(["--segments", "0"], "got 0"), (["--segments", "11"], "got 11"),
                                           (["--max-segments", "9"], "got 10")])
def test_batch_job_refuses_default_segments_outside_its_bound_before_loading_anything(
        tmp_path, monkeypatch, capsys, flags, shown):
    """The default comes from story.segments (10 in tiny) when --segments is not given."""
    monkeypatch.setattr(sys, "argv", ["generate_stories.py", "--config", "tiny", "--prompts", str(tmp_path / "p.jsonl"),
                                      "--out", str(tmp_path / "out"), "--max-segments", "10", *flags])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "jobs" / "generate_stories.py"), run_name="__main__")
    bound = flags[1] if flags[0] == "--max-segments" else "10"
    assert exited.value.code == 2
    assert f"--segments must be in [1, --max-segments={bound}], {shown}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_local_paths_keep_the_actor_pool_on_the_drivers_node(tmp_path):
    """On two nodes, the pool spreads when every path is in object storage (Ray Data's default) and stays on the
    driver's node when the output folder or an image is local; a driver's node too small for it is refused."""
    out = tmp_path / "placement.json"
    env = {name: value for name, value in os.environ.items() if name != "RAY_AUTH_MODE"}  # not the stack's Ray
    done = subprocess.run([sys.executable, "-m", "tests.generation.placement", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["worker"] in report["remote"], "with nothing local, the pool may use every node"
    assert report["local_out"] == report["local_image"] == [report["driver"]]
    assert report["refused"] == ("/tmp/stories is a local path, so the story writers must run on the driver's node, "
                                 "whose 1 CPU(s) cannot hold 3 actors of 0.5: use s3:// paths to write on the whole "
                                 "cluster, or fewer actors")


@pytest.mark.stack
def test_batch_job_writes_one_storybook_per_good_prompt_and_counts_the_bad(ray_head, story_models, weights_cache):
    bucket = ray_head.bucket
    root = f"s3://{bucket}/batch-{uuid.uuid4().hex[:6]}"
    frame = render_frame(toy_story(story_models.config.data.toy, 2).states[0], 64)
    storage.write_bytes(f"{root}/in/opening.png", encode_image(frame, ".png"))
    storage.write_bytes(f"{root}/in/broken.png", b"not a picture")
    prompts = [{"id": "with-image", "text": "Ben is big.", "image": "opening.png", "segments": 2},
               {"text": "Zoe travels.", "segments": 1}, {"id": "bad-image", "text": "x", "image": "broken.png"}]
    lines = [json.dumps(p) for p in prompts] + ['{"text": ']
    storage.write_bytes(f"{root}/in/prompts.jsonl", "\n".join(lines).encode())
    runtime_env = {"env_vars": {"SEEDSTORY_WEIGHTS_CACHE": str(weights_cache), "HF_HUB_OFFLINE": "1"}}
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/generate_stories.py",
         "--config", "tiny", "--prompts", f"{root}/in/prompts.jsonl", "--out", f"{root}/out",
         "--cpus-per-actor", "0.5", *story_models.overrides],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    summary = json.loads(storage.read_bytes(f"{root}/out/summary.json"))
    assert summary["stories"] == 2 and summary["bad_prompts"] == 2
    assert [entry["line"] for entry in summary["bad"]] == [3, 4]
    assert "broken.png" in summary["bad"][0]["detail"] and summary["bad"][1]["detail"].startswith("not JSON")
    assert {entry["id"]: entry["segments"] for entry in summary["written"]} == {"with-image": 2, "line-000002": 1}
    for entry in summary["written"]:
        story = json.loads(storage.read_bytes(storage.join(entry["storybook"].removesuffix("/index.html"), "story.json")))
        assert len(story["segments"]) == entry["segments"]
        assert story["models"]["mllm"]["version"] == story_models.versions["mllm"]
    assert "2 stories written, 2 bad prompts skipped" in done.stdout
