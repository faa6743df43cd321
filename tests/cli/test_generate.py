"""`seedstory generate` from models registered in this test run, and its answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seedstory import storage
from seedstory.cli.main import main
from seedstory.data.images import encode_image
from seedstory.data.toyworld.generate import toy_story
from seedstory.data.toyworld.render import render_frame

pytestmark = pytest.mark.stack

SEEDSTORY = str(Path(sys.executable).parent / "seedstory")


@pytest.fixture(scope="module")
def opening_png(story_models, tmp_path_factory) -> Path:
    story = toy_story(story_models.config.data.toy, 1)
    path = tmp_path_factory.mktemp("opening") / "opening.png"
    path.write_bytes(encode_image(render_frame(story.states[0], 64), ".png"))
    return path


def _files(out: str) -> dict[str, bytes]:
    fs, root = storage.filesystem_for(out)
    return {Path(p).name: fs.cat_file(p) for p in fs.find(root)}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_generate_writes_a_complete_storybook(story_models, opening_png, tmp_path, where):
    out = str(tmp_path / "story") if where == "local" else f"s3://{story_models.config.storage.bucket}/stories/cli-{tmp_path.name}"
    done = subprocess.run(
        [SEEDSTORY, "generate", "--config", "tiny", "--image", str(opening_png), "--text", "Tom hops in on the left.",
         "--segments", "3", "--out", out, *story_models.overrides],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = _files(out)
    manifest = json.loads(files["story.json"])
    assert [s["index"] for s in manifest["segments"]] == [0, 1, 2]
    assert sorted(name for name in files if name.endswith(".png")) == [s["image"] for s in manifest["segments"]]
    assert all(files[s["image"]].startswith(b"\x89PNG") for s in manifest["segments"])
    assert manifest["outcome"] == "completed" and manifest["config"]["story"]["segments"] == 3
    assert {part: info["version"] for part, info in manifest["models"].items()} == story_models.versions
    assert files["index.html"].decode().count("<img ") == 4  # the opening and three segments
    assert f"storybook: {storage.join(out, 'index.html')}" in done.stdout


def test_generate_from_a_dataset_story(story_models, tmp_path):
    """--from-split opens with the first caption and frame of a story of that split."""
    from seedstory.data.toyworld.generate import write_toy_world

    config = story_models.config
    uri = f"s3://{config.storage.bucket}/toy-cli-{tmp_path.name}"
    write_toy_world(config.data.toy.model_copy(update={"stories": 2, "val_fraction": 0.0, "test_fraction": 0.0}), uri)
    code = main(["generate", "--config", "tiny", "--from-split", "train", "--story", "1", "--segments", "1",
                 "--out", str(tmp_path / "s"), *story_models.overrides, f"data.train_jsonl=[{uri}/train.jsonl]",
                 f"data.image_root={uri}/images"])
    assert code == 0
    manifest = json.loads((tmp_path / "s" / "story.json").read_text())
    assert manifest["opening"] == {"text": toy_story(config.data.toy, 1).record.captions[0], "image": True}


@pytest.mark.parametrize("arguments, problem", [
    (["--text", "", "--segments", "2"], "text: empty"),
    (["--text", "Tom waits.", "--segments", "0"], "segments: must be at least 1, got 0"),
    (["--text", "Tom waits.", "--image", "{tmp}/missing.png"], "image: cannot read {tmp}/missing.png"),
    (["--text", "Tom waits.", "--image", "{tmp}/not-an-image.png"], "image: {tmp}/not-an-image.png: cannot decode"),
    (["--text", "Tom waits.", "--alias", "nonesuch"], "@nonesuch: no such registered model version"),
    (["--text", "Tom waits.", "--seed", "4294967296", "--mllm", "{tmp}/no-export"],
     "seed: must be in [0, 4294967296), got 4294967296"),
    (["--text", "Tom waits. " * 300], "more than half the model's context"),
    (["--text", "Tom waits.", "--image", ""], "image: empty"),
    (["--text", "Tom waits.", "--mllm", "{tmp}/no-export"], "models: weights not found: {tmp}/no-export"),
    (["--text", "Tom waits.", "--detokenizer", "{tmp}"], "models: {tmp}: no seedstory.json, so not a seedstory"),
    (["--text", "Tom waits.", "--out", "{tmp}/not-an-image.png/out"], "out: cannot write to {tmp}/not-an-image.png/out"),
])
def test_bad_input_exits_non_zero_naming_it(story_models, tmp_path, capsys, arguments, problem):
    """Each exits 2 naming the problem and writes nothing; the seed and the output folder are checked before any
    model loads (a bad seed is named even when the MLLM it would load is missing)."""
    (tmp_path / "not-an-image.png").write_text("hello")
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    out = [] if "--out" in arguments else ["--out", str(tmp_path / "out")]
    code = main(["generate", "--config", "tiny", *arguments, *out, *story_models.overrides])
    assert code == 2
    assert problem.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing is written for a request that was refused"
