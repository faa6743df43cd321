"""Faults on the deployed service: replicas killed mid-story, clients that hang up, a crowd of mixed requests."""

from __future__ import annotations

import http.client
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import ray

pytestmark = pytest.mark.stack


def kill_replica(deployment: str) -> str:
    """Kill one replica of ``deployment`` of the seedstory application the way a lost node would."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::seedstory#{deployment}#")]
    assert names, f"no {deployment} replica is running"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def test_a_painter_replica_killed_mid_story_costs_no_picture(ray_cluster, service):
    events, killed = [], None
    for event in service.stream({"text": "A fox paints.", "segments": 24, "seed": 1}, timeout=180):
        events.append(event)
        if event["type"] == "text" and killed is None:
            killed = kill_replica("painter")
    assert killed
    assert events[-1]["type"] == "done", events[-1]
    assert sorted(e["index"] for e in events if e["type"] == "image") == list(range(24))


def test_a_writer_replica_killed_mid_story_ends_it_with_an_error_and_the_next_story_works(ray_cluster, service):
    began, events = time.monotonic(), []
    for event in service.stream({"text": "An owl writes.", "segments": 400, "seed": 2}, timeout=120):
        events.append(event)
        if event["type"] == "text" and event["index"] == 0:
            kill_replica("writer")
    assert events[-1]["type"] == "error", [e["type"] for e in events[-3:]]
    assert "lost" in events[-1]["message"]
    assert time.monotonic() - began < 60
    assert service.story({"text": "An owl writes again.", "segments": 2})[-1]["type"] == "done"


def test_a_client_that_hangs_up_cancels_its_story(service, ray_head):
    stream = service.stream({"text": "A cat leaves early.", "segments": 400, "seed": 3})
    story_id = next(stream)["id"]
    assert next(stream)["type"] == "text"
    stream.close()
    logs = Path(ray_head.ray_temp_dir, "session_latest", "logs", "serve")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = [line for log in logs.glob("replica_seedstory_writer_*.log")
                 for line in log.read_text(errors="replace").splitlines() if story_id in line]
        if any("cancelled after" in line for line in lines):
            break
        time.sleep(0.5)
    cancelled = [line for line in lines if "cancelled after" in line]
    assert cancelled, f"the writer never stopped story {story_id}"
    written = int(cancelled[0].split("cancelled after ")[1].split()[0])
    assert written < 400
    assert service.request("GET", f"/v1/stories/{story_id}")[0] == 404, "a cancelled story is not saved"


def test_sixty_four_concurrent_requests_mixing_valid_and_malformed(service):
    valid = [json.dumps({"text": f"Story {i}: a fox.", "segments": 2, "seed": i}).encode() for i in range(32)]
    malformed = [b'{"text": "", "segments": 2}', b'{"text": "A cat.", "segments": 0}', b"{oops",
                 b'{"text": "A cat.", "segments": 2, "image": "!!"}'] * 8

    def send(body: bytes) -> tuple[int, bytes]:
        status, _, raw = service.request("POST", "/v1/stories", body, timeout=300)
        return status, raw

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(send, valid + malformed))
    statuses = [status for status, _ in results]
    assert not [s for s in statuses if s >= 500], statuses
    for status, raw in results[:32]:
        assert status == 200 and json.loads(raw.decode().splitlines()[-1])["type"] == "done", raw[-300:]
    assert all(400 <= status < 500 for status in statuses[32:]), statuses[32:]


def test_a_full_writer_queue_answers_503_with_retry_after(service):
    original = json.loads(json.dumps(service.deploy_config))
    narrow = json.loads(json.dumps(original))
    for deployment in narrow["applications"][0]["deployments"]:
        if deployment["name"] == "writer":
            deployment.update(max_ongoing_requests=1, max_queued_requests=1)
            narrow_writer = deployment["backpressure_config"]
            deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    service.redeploy(narrow)

    def first_event_or_refusal(_: int) -> tuple[int, dict[str, str], bytes]:
        """A long story that holds the writer; once it has started, the client hangs up to free it."""
        parts = urlsplit(service.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        try:
            connection.request("POST", "/v1/stories", body=json.dumps({"text": "A queue of foxes.", "segments": 400}),
                               headers={"Authorization": f"Bearer {service.token}", "Content-Type": "application/json"})
            response = connection.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.readline() if response.status == 200 else response.read()
        finally:
            connection.close()

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(first_event_or_refusal, range(6)))
    finally:
        service.redeploy(original)
    statuses = sorted(status for status, _, _ in results)
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 503}, statuses
    for status, headers, raw in results:
        if status == 503:
            assert int(headers["retry-after"]) == math.ceil(narrow_writer["retry_after_s"]) and b"backpressure" in raw
        else:
            assert json.loads(raw)["type"] == "story"
