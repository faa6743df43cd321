"""A bounded load on the story service, and the replicas it makes Serve start.

Every story is streamed the way a client reads it, so the times are what a person waits for:
to the first text, the first picture and the whole story. Load is bounded twice (a story count
and a deadline) and goes only to a loopback address.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from seedstory.serving.deploy import dashboard_headers

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class StoryResult:
    status: int
    first_text_s: float | None = None
    first_image_s: float | None = None
    total_s: float | None = None
    outcome: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def loopback_only(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"load goes to loopback only; {url} is on {host}")


def read_story(url: str, payload: dict[str, Any], token: str | None, timeout_s: float) -> StoryResult:
    """POST one story and read its events to the end, timing what the client sees."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    began = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        connection.request("POST", "/v1/stories", body=json.dumps(payload).encode(), headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            return StoryResult(status=response.status, error=response.read()[:300].decode(errors="replace"))
        result = StoryResult(status=200)
        while line := response.readline():
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict) or "type" not in event:
                result.error = f"not an event: {line[:80]!r}"
                break
            elapsed = time.perf_counter() - began
            if event["type"] == "text" and result.first_text_s is None:
                result.first_text_s = elapsed
            elif event["type"] == "image" and result.first_image_s is None:
                result.first_image_s = elapsed
            elif event["type"] == "done":
                result.outcome, result.stats = event["outcome"], event["stats"]
            elif event["type"] == "error":
                result.error = event["message"]
        if result.outcome is None and result.error is None:
            result.error = "the stream ended without a done or error event"
        result.total_s = time.perf_counter() - began
        return result
    except (OSError, http.client.HTTPException) as err:
        return StoryResult(status=599, error=f"{type(err).__name__}: {err}")
    finally:
        connection.close()


def drive(url: str, token: str | None, concurrency: int, stories: int, segments: int, deadline_s: float,
          timeout_s: float = 300) -> list[StoryResult]:
    """``stories`` stories, ``concurrency`` at a time; none is started after ``deadline_s``."""
    loopback_only(url)
    stop_at = time.monotonic() + deadline_s

    def one(index: int) -> StoryResult | None:
        if time.monotonic() > stop_at:
            return None
        return read_story(url, {"text": f"Story {index}: a fox finds a key.", "segments": segments, "seed": index},
                          token, timeout_s)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [r for r in pool.map(one, range(stories)) if r is not None]


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0]}
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": statistics.median(values), "p95": cuts[18]}


def summarize(results: list[StoryResult], wall_s: float) -> dict[str, Any]:
    done = [r for r in results if r.status == 200 and r.outcome is not None]
    return {
        "stories": len(results), "completed": len(done),
        "stories_per_s": len(done) / wall_s if wall_s > 0 else None,
        "status_4xx": sum(400 <= r.status < 500 for r in results),
        "status_5xx": sum(r.status >= 500 for r in results),
        "stream_errors": sum(r.error is not None and r.status == 200 for r in results),
        "time_to_first_text_s": _quantiles([r.first_text_s for r in done if r.first_text_s is not None]),
        "time_to_first_image_s": _quantiles([r.first_image_s for r in done if r.first_image_s is not None]),
        "story_s": _quantiles([r.total_s for r in done]),
        "wall_over_slower": _quantiles([r.stats["wall_over_slower"] for r in done]),
        "write_s": _quantiles([r.stats["write_s"] for r in done]),
        "paint_s": _quantiles([r.stats["paint_s"] for r in done]),
    }


class ReplicaTrace:
    """Running replicas of each deployment over time, polled from Serve's REST API on the dashboard."""

    def __init__(self, address: str, application: str, period_s: float = 0.5) -> None:
        self.address = address.rstrip("/")
        self.application = application
        self.period_s = period_s
        self.samples: list[dict[str, Any]] = []
        self.failed_polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._began = 0.0

    def __enter__(self) -> ReplicaTrace:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def running(self) -> dict[str, int]:
        parts = urlsplit(self.address)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        try:
            connection.request("GET", "/api/serve/applications/", headers=dashboard_headers())
            details = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        deployments = details["applications"][self.application]["deployments"]
        return {name: sum(r["state"] == "RUNNING" for r in d["replicas"]) for name, d in deployments.items()}

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append({"t_s": time.monotonic() - self._began, **self.running()})
            except (OSError, KeyError, ValueError, http.client.HTTPException):
                self.failed_polls += 1
            self._stop.wait(self.period_s)

    def settle(self, replicas: dict[str, int], timeout_s: float) -> None:
        """Wait until each named deployment runs exactly ``replicas[name]`` replicas (after a load scaled it up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = self.running()
            if all(running.get(name) == count for name, count in replicas.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas {running} did not settle to {replicas} within {timeout_s:.0f} s")
            time.sleep(self.period_s)

    def peak(self) -> dict[str, int]:
        names = {k for s in self.samples for k in s if k != "t_s"}
        return {name: max(s.get(name, 0) for s in self.samples) for name in sorted(names)}

