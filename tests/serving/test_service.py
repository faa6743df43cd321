"""The deployed service end to end: streamed stories, saved stories, bad input, auth, model reloads."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from seedstory.config import load_config
from seedstory.generation.pipeline import StoryModels, StoryPipeline, model_references, resolve_models
from seedstory.generation.storybook import PAGE_FILE, STORY_FILE
from seedstory.serving.deploy import build_config
from seedstory.storage import filesystem_for, join, read_bytes
from seedstory.training.registry import register_export
from tests.serving.conftest import MAX_SEGMENTS, SERVE_FILE

pytestmark = pytest.mark.stack


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def opening_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (30, 120, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_committed_deploy_config_is_what_serve_build_writes_now():
    assert SERVE_FILE.read_text() == build_config(), "serve/config.yaml is stale: run `seedstory serve build`"
    config = yaml.safe_load(SERVE_FILE.read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert set(deployments) == {"ingress", "writer", "painter"}
    serve = load_config("demo").serve
    for name, deployment in deployments.items():
        assert {"min_replicas", "max_replicas", "target_ongoing_requests"} <= deployment["autoscaling_config"].keys()
        assert deployment["user_config"]["config"] == "demo"
        # Serve's default, 20 s, would kill a replica scaled down mid-story
        assert deployment["graceful_shutdown_timeout_s"] == getattr(serve, name).graceful_shutdown_timeout_s


def test_a_story_streams_each_text_before_its_picture_and_is_saved(service, story_models):
    events = service.story({"text": "A red fox finds a key.", "image": opening_png(), "segments": 4, "seed": 3})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "story" and kinds[-1] == "done", kinds
    story_id = events[0]["id"]
    models = events[0]["models"]
    assert {part: models[part]["version"] for part in ("mllm", "detokenizer")} == story_models.versions
    position = {(e["type"], e.get("index")): n for n, e in enumerate(events)}
    for index in range(4):
        assert position[("text", index)] < position[("image", index)]
        if index:
            assert position[("text", index - 1)] < position[("text", index)]
    assert sorted(e["index"] for e in events if e["type"] == "image") == [0, 1, 2, 3]
    done = events[-1]
    assert done["outcome"] == "completed" and done["stats"]["segments"] == 4
    assert 0 < done["stats"]["time_to_first_text_s"] <= done["stats"]["wall_s"]

    status, _, raw = service.request("GET", f"/v1/stories/{story_id}")
    assert status == 200
    manifest = json.loads(raw)
    texts = {e["index"]: e["text"] for e in events if e["type"] == "text"}
    assert [s["text"] for s in manifest["segments"]] == [texts[i] for i in range(4)]
    assert manifest["outcome"] == "completed" and manifest["opening"] == {"text": "A red fox finds a key.", "image": True}
    assert {part: manifest["models"][part]["version"] for part in story_models.versions} == story_models.versions
    streamed = {e["index"]: base64.b64decode(e["png"]) for e in events if e["type"] == "image"}
    for index in range(4):
        status, headers, png = service.request("GET", f"/v1/stories/{story_id}/{index}.png")
        assert status == 200 and headers["content-type"] == "image/png"
        assert np.array_equal(pixels(png), pixels(streamed[index]))
    folder = done["stats"]["saved"]
    assert folder.startswith("s3://") and folder.endswith(story_id)
    assert b"<img" in read_bytes(join(folder, PAGE_FILE)) and json.loads(read_bytes(join(folder, STORY_FILE)))


def test_a_served_story_is_the_one_seedstory_generate_writes(service, story_models):
    """Same models and seed: the same text, and pictures within rounding of batched vs single painting."""
    config = story_models.config
    pipeline = StoryPipeline(StoryModels.load(resolve_models(config, model_references(config, "candidate"))), config)
    local = pipeline.write("The owl meets a cat.", None, segments=3, seed=11).wait()
    events = service.story({"text": "The owl meets a cat.", "segments": 3, "seed": 11})
    assert [e["text"] for e in events if e["type"] == "text"] == [s.text for s in local.segments]
    served = {e["index"]: pixels(base64.b64decode(e["png"])) for e in events if e["type"] == "image"}
    for index, image in enumerate(local.images()):
        assert np.abs(served[index] - np.asarray(image, dtype=np.int16)).max() <= 2


def test_stories_in_flight_together_share_a_writer_replica_s_forwards(service):
    """Three concurrent stories on at most two writer replicas: some forward served more than one story."""
    barrier = threading.Barrier(3)

    def one(seed: int) -> list[dict]:
        barrier.wait()
        return service.story({"text": f"Fox {seed} runs.", "segments": 12, "seed": seed})

    with ThreadPoolExecutor(max_workers=3) as pool:
        ends = [events[-1] for events in pool.map(one, range(3))]
    assert [end["type"] for end in ends] == ["done"] * 3, ends
    assert max(end["stats"]["batch"] for end in ends) >= 2, [end["stats"] for end in ends]


@pytest.mark.parametrize("path, payload, status, field", [
    ("/v1/stories", b'{"segments": 2}', 422, "text"),
    ("/v1/stories", b'{"text": "  ", "segments": 2}', 422, "text"),
    ("/v1/stories", json.dumps({"text": "x" * 501, "segments": 2}).encode(), 422, "text"),
    ("/v1/stories", json.dumps({"text": "\U0001f98a" * 500, "segments": 2}).encode(), 422, "text"),  # the writer's tokens
    ("/v1/stories", b'{"text": "A cat.", "segments": 0}', 422, "segments"),
    ("/v1/stories", json.dumps({"text": "A cat.", "segments": MAX_SEGMENTS + 1}).encode(), 422, "segments"),
    ("/v1/stories", b'{"text": "A cat.", "segments": 2, "image": "bm90IGFuIGltYWdl"}', 422, "image"),
    ("/v1/stories", b"not json", 400, None),
    ("/v1/stories", json.dumps({"text": "A cat.", "segments": 2, "image": "A" * (9 * 2**20)}).encode(), 413, None),
])
def test_bad_input_gets_a_4xx_naming_the_field(service, path, payload, status, field):
    got, headers, raw = service.request("POST", path, payload)
    assert got == status, raw
    assert headers["content-type"] == "application/json"
    assert json.loads(raw)["error"]["field"] == field
    assert b"Traceback" not in raw and b"\x1b" not in raw, raw


@pytest.mark.parametrize("path", ["/v1/stories/" + "0" * 32, "/v1/stories/../../etc", "/v1/stories/nope/0.png",
                                  "/v1/stories/" + "0" * 32 + "/0.png", "/v1/stories/" + "0" * 32 + "/x.gif"])
def test_unknown_stories_are_404(service, path):
    status, _, raw = service.request("GET", path)
    assert status == 404, raw


def test_every_v1_route_needs_the_token_and_health_and_page_do_not(service):
    for method, path, body in [("GET", "/v1/models", None), ("GET", "/v1/stories/" + "0" * 32, None),
                               ("POST", "/v1/stories", b'{"text": "A cat.", "segments": 1}')]:
        for token in (None, "wrong-token"):
            status, headers, raw = service.request(method, path, body, token=token)
            assert status == 401, (path, token, raw)
            assert headers["www-authenticate"] == "Bearer"
            assert json.loads(raw)["error"]["field"] == "Authorization"
    assert service.request("GET", "/healthz", token=None)[0] == 200
    status, headers, page = service.request("GET", "/", token=None)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="story-form"' in page and b"v1/stories" in page


def test_moving_the_alias_and_redeploying_reloads_models_without_dropping_the_service(service, story_models):
    client = MlflowClient()
    config = story_models.config
    moved = {}
    for part, name in (("mllm", config.train.story_instruct.registered_model),
                       ("detokenizer", config.train.detokenizer_adapt.registered_model)):
        current = client.get_model_version_by_alias(name, "candidate")
        fs, path = filesystem_for(current.source)
        fs.copy(path, f"{path}-champion", recursive=True)
        moved[part] = register_export(client, name, f"{current.source}-champion", current.run_id,
                                      alias="champion").version
    assert moved != story_models.versions

    failures: list[str] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            status, _, raw = service.request("GET", "/healthz", token=None, timeout=10)
            if status != 200:
                failures.append(f"{status} {raw[:200]!r}")
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    original = json.loads(json.dumps(service.deploy_config))
    try:
        champion = json.loads(json.dumps(original))
        for deployment in champion["applications"][0]["deployments"]:
            deployment["user_config"]["alias"] = "champion"
        service.redeploy(champion)  # returns once the replicas reconfigured: no waiting for the models to move
        models = json.loads(service.request("GET", "/v1/models")[2])
        assert {part: models[part]["version"] for part in moved} == moved
        events = service.story({"text": "A fox.", "segments": 1})
        assert {part: events[0]["models"][part]["version"] for part in moved} == moved
        assert all(events[0]["models"][part]["uri"].endswith("-champion") for part in moved)
    finally:
        stop.set()
        prober.join()
        service.redeploy(original)
    assert not failures, failures
