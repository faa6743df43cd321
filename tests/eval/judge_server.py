"""A loopback server that speaks the OpenAI chat-completions protocol with scripted replies.

Each request pops the next scripted answer: ``(status, text)``; a status other than 200 is sent as
that HTTP error (a 429 carries ``Retry-After: 0``). When the script is empty, ``default`` answers:
a function of the request's body, so a judge can be made to prefer a position or a story.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, default: Callable[[dict], str] = lambda body: "Both are fine. [[C]]") -> None:
        self.script: list[tuple[int, str]] = []
        self.default = default
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                status, text = server.script.pop(0) if server.script else (200, server.default(body))
                if status != 200:
                    return self._send(status, {"error": {"message": text}}, {"Retry-After": "0"})
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                """Silent: the tests read what was asked from ``requests``, not from stderr."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def story_texts(body: dict) -> list[str]:
    """The text parts of a request, in order (prompt first)."""
    return [part["text"] for part in body["messages"][0]["content"] if part["type"] == "text"]


def images_in(body: dict) -> int:
    return sum(part["type"] == "image_url" for part in body["messages"][0]["content"])
