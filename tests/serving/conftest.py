"""The story service, deployed with ``seedstory serve deploy`` from the committed ``serve/config.yaml``.

Only what a test session must change is changed: the HTTP port (a free one), the models (this
run's registered tiny models, through ``user_config``) and the replicas' environment (the
weights cache and an API token).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from seedstory.serving.deploy import deploy, shutdown, with_selection
from seedstory.models.weights import CACHE_ENV
from seedstory.stack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_FILE = REPO_ROOT / "serve" / "config.yaml"
TOKEN = "test-token-5f1c"
TOKEN_ENV = "SEEDSTORY_API_TOKEN"
# Long stories, so that a fault or a disconnect lands mid-story.
MAX_SEGMENTS = 400


@dataclass
class Service:
    url: str
    address: str
    config_file: Path
    deploy_config: dict[str, Any]
    token: str

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = "default",
                headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def stream(self, payload: dict[str, Any], timeout: float = 120) -> Iterator[dict[str, Any]]:
        """The story's events as they arrive; closing the iterator hangs up."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            connection.request("POST", "/v1/stories", body=json.dumps(payload).encode(),
                               headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200, response.read()
            while line := response.readline():
                yield json.loads(line)
        finally:
            connection.close()

    def story(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        status, headers, raw = self.request("POST", "/v1/stories", json.dumps(payload).encode())
        assert status == 200, raw
        assert headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]

    def redeploy(self, deploy_config: dict[str, Any]) -> None:
        self.config_file.write_text(yaml.safe_dump(deploy_config, sort_keys=False))
        deploy(self.config_file, self.address, timeout_s=300)
        self.deploy_config = deploy_config


def deploy_config_for(story_models, port: int, weights_cache: Path) -> dict[str, Any]:
    user_config = {"config": "tiny", "alias": None,
                   "overrides": [*story_models.overrides, f"serve.max_segments={MAX_SEGMENTS}"]}
    return with_selection(yaml.safe_load(SERVE_FILE.read_text()), user_config, port=port,
                          env_vars={CACHE_ENV: str(weights_cache), TOKEN_ENV: TOKEN})


@pytest.fixture(scope="package")
def service(ray_head, story_models, weights_cache, tmp_path_factory):
    config_file = tmp_path_factory.mktemp("serve") / "config.yaml"
    deploy_config = deploy_config_for(story_models, free_port(), weights_cache)
    config_file.write_text(yaml.safe_dump(deploy_config, sort_keys=False))
    address = ray_head.ray_dashboard_url
    url = deploy(config_file, address, timeout_s=300)
    yield Service(url=url, address=address, config_file=config_file, deploy_config=deploy_config, token=TOKEN)
    shutdown(address)
