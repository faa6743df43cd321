"""The load generator behind jobs/bench_serve.py, against the deployed service and a server that misbehaves."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seedstory.serving import load
from seedstory.serving.deploy import APP_NAME


def test_load_goes_to_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        load.drive("http://192.0.2.1:8000", None, 1, 1, 1, 1.0)


@pytest.mark.parametrize("body, error", [
    (b'{"type": "text", "index": 0, "text": "Tom waits."}\n', "the stream ended without a done or error event"),
    (b'{"type": "text", "ind', "not an event: "),
    (b'[]\n', "not an event: "),
])
def test_a_stream_cut_short_is_a_stream_error(body, error):
    class CutShort(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            """Quiet: the test reads what the client saw."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = load.read_story(f"http://127.0.0.1:{server.server_port}/v1/stories", {"text": "x", "segments": 1},
                                 None, timeout_s=10)
    finally:
        server.shutdown()
        server.server_close()
    assert result.status == 200 and result.error.startswith(error), result.error
    assert load.summarize([result], 1.0)["stream_errors"] == 1


@pytest.mark.stack
def test_a_bounded_load_is_timed_and_counted(service):
    results = load.drive(service.url, service.token, concurrency=2, stories=4, segments=2, deadline_s=60)
    summary = load.summarize(results, wall_s=10.0)
    assert (summary["stories"], summary["completed"], summary["status_4xx"], summary["status_5xx"]) == (4, 4, 0, 0)
    assert summary["stories_per_s"] == 0.4
    first_text, story = summary["time_to_first_text_s"], summary["story_s"]
    assert 0 < first_text["p50"] <= first_text["p95"] <= story["p95"]
    assert all(r.outcome == "completed" and r.stats["segments"] == 2 for r in results)

    refused = load.drive(service.url, "wrong-token", concurrency=1, stories=2, segments=1, deadline_s=60)
    assert load.summarize(refused, wall_s=1.0)["status_4xx"] == 2


@pytest.mark.stack
def test_replicas_are_traced_per_deployment(service):
    with load.ReplicaTrace(service.address, APP_NAME, period_s=0.2) as trace:
        load.drive(service.url, service.token, concurrency=1, stories=1, segments=1, deadline_s=60)
    assert trace.samples and trace.failed_polls == 0
    peak = trace.peak()
    assert set(peak) == {"ingress", "writer", "painter"} and min(peak.values()) >= 1
    trace.settle(trace.running(), timeout_s=5)
