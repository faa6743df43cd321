"""The embedded local stack: SeaweedFS (S3), MLflow tracking server, Ray head.

Each service is a daemon this module starts as a session leader and stops by its recorded
PID. Starting twice is a no-op for whatever is already up; a port held by anything else is
an error that names the port and the service that wanted it.

Nothing here is reachable from the network: every service binds loopback only. The S3
gateway also refuses requests not signed with the stack's key, and the Ray head runs with
Ray's token authentication, so a local client without the stack's token is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from seedstory.config.infra import StackConfig
from seedstory.stack.processes import PidRecord, StackError, port_in_use, read_pidfile, spawn, terminate, wait_until
from seedstory.stack.secrets import StackSecrets, write_private
from seedstory.storage import S3Settings, ensure_bucket

LOCAL_REGION = "us-east-1"

# SeaweedFS's internal servers, in the order they take ports from ``s3_internal_ports_from``.
S3_INTERNAL_PORTS = (
    "master", "volume", "filer", "admin",
    "master gRPC", "volume gRPC", "filer gRPC", "S3 gRPC", "admin gRPC",
)

# On Linux Ray swaps a loopback node address for the machine's own, and its GCS, raylet and agents then
# listen on every interface. With its multi-node mode off (the Windows and macOS default) the node keeps
# 127.0.0.1 and they bind only that. Ray reads it at import, in the head and in every client alike: a
# client without it looks for the head at the machine's address and cannot reach it.
RAY_ON_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@dataclass
class Service:
    name: str
    ports: dict[str, int]
    url: str
    health_url: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_headers: dict[str, str] = field(default_factory=dict)
    after_start: Callable[[], None] | None = None


class LocalStack:
    """The three local services, their state (PID files, logs, data) under ``config.state_dir``."""

    def __init__(self, config: StackConfig, bucket: str = "seedstory"):
        self.config = config
        self.bucket = bucket
        self.state_dir = config.state_dir.expanduser().resolve()
        self.host = config.host

    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.config.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.config.mlflow_port}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{self.host}:{self.config.ray_dashboard_port}"

    @property
    def ray_gcs_address(self) -> str:
        return f"{self.host}:{self.config.ray_gcs_port}"

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's session directory; kept short because Ray puts unix sockets in it."""
        candidate = self.state_dir / "ray"
        if len(str(candidate)) <= 48:
            return candidate
        digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"seedstory-ray-{digest}"

    @cached_property
    def secrets(self) -> StackSecrets:
        return StackSecrets.load_or_create(self.state_dir / "secrets.json")

    @property
    def ray_auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets.ray_token}"}

    def client_env(self) -> dict[str, str]:
        """What a client (a job, a test, a shell) needs to reach this stack."""
        return {
            "AWS_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": self.secrets.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.secrets.s3_secret_key,
            "AWS_REGION": LOCAL_REGION,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "RAY_ADDRESS": self.ray_gcs_address,
            "RAY_API_SERVER_ADDRESS": self.ray_dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.secrets.ray_token,
            "RAY_USAGE_STATS_ENABLED": "0",
            **RAY_ON_LOOPBACK,
            "SEEDSTORY_BUCKET": self.bucket,
        }

    def _bin(self, name: str) -> str:
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
        found = shutil.which(name)
        if not found:
            raise StackError(f"cannot find the '{name}' executable next to {sys.executable} or on PATH")
        return found

    def services(self) -> list[Service]:
        c = self.config
        # Jobs run `python ...` through the shell: the stack's own interpreter must come first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, **self.client_env(), "PATH": path}
        del env["RAY_ADDRESS"]  # the head must start its own cluster, not join the one a client points at
        internal = dict(zip(S3_INTERNAL_PORTS, range(c.s3_internal_ports_from, c.s3_internal_ports_from + 9)))
        s3 = Service(
            name="s3",
            ports={"S3 API": c.s3_port, **internal},
            url=self.s3_url,
            health_url=f"{self.s3_url}/healthz",
            command=[
                self._bin("weed"), "mini", f"-dir={self.state_dir / 's3'}",
                f"-ip={self.host}", f"-ip.bind={self.host}", f"-s3.port={c.s3_port}",
                f"-s3.config={self.s3_identities_file}", "-master.telemetry=false",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-master.port={internal['master']}", f"-master.port.grpc={internal['master gRPC']}",
                f"-volume.port={internal['volume']}", f"-volume.port.grpc={internal['volume gRPC']}",
                f"-filer.port={internal['filer']}", f"-filer.port.grpc={internal['filer gRPC']}",
                f"-admin.port={internal['admin']}", f"-admin.port.grpc={internal['admin gRPC']}",
                f"-s3.port.grpc={internal['S3 gRPC']}",
            ],
            env=env,
            after_start=lambda: ensure_bucket(self.bucket, S3Settings.from_env(self.client_env())),
        )
        mlflow = Service(
            name="mlflow",
            ports={"tracking server": c.mlflow_port},
            url=self.mlflow_url,
            health_url=f"{self.mlflow_url}/health",
            command=[
                self._bin("mlflow"), "server", "--host", self.host, "--port", str(c.mlflow_port),
                "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
                "--artifacts-destination", f"s3://{self.bucket}/mlflow", "--workers", "1",
            ],
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        ray_cmd = [
            self._bin("ray"), "start", "--head", "--block",
            "--node-ip-address", self.host, "--port", str(c.ray_gcs_port),
            "--dashboard-host", self.host, "--dashboard-port", str(c.ray_dashboard_port),
            "--ray-client-server-port", str(c.ray_client_port),
            "--dashboard-agent-listen-port", str(c.ray_agent_port),
            "--object-store-memory", str(c.ray_object_store_mb * 1024 * 1024),
            "--temp-dir", str(self.ray_temp_dir), "--disable-usage-stats",
        ]
        if c.ray_num_cpus is not None:
            ray_cmd += ["--num-cpus", str(c.ray_num_cpus)]
        ray = Service(
            name="ray",
            ports={
                "GCS": c.ray_gcs_port, "dashboard/job server": c.ray_dashboard_port,
                "client server": c.ray_client_port, "dashboard agent": c.ray_agent_port,
            },
            url=self.ray_dashboard_url,
            health_url=f"{self.ray_dashboard_url}/api/version",
            health_headers=self.ray_auth_headers,
            command=ray_cmd,
            # One node and nothing to drain to. Left on, Ray's SIGTERM handler waits up to 30 s for the node to
            # go idle, which a head holding Ray Data's and Ray Train's detached actors never does.
            env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
            after_start=lambda: wait_until(
                lambda: _http_ok(f"{self.ray_dashboard_url}/api/jobs/", self.ray_auth_headers),
                timeout_s=c.start_timeout_s, what="Ray job server",
            ),
        )
        return [s3, mlflow, ray]

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def running(self, name: str) -> PidRecord | None:
        record = read_pidfile(self._pidfile(name))
        return record if record is not None and record.process() is not None else None

    def up(self, only: list[str] | None = None, report: Callable[[str], None] = print) -> None:
        """Start the services (``only`` a subset, in stack order) that are not already up."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_env_file()
        self._write_s3_identities()
        for service in self.services():
            if only is not None and service.name not in only:
                continue
            if self.running(service.name):
                report(f"{service.name}: already up at {service.url}")
                continue
            taken = [f"{port} ({service.name} {label})" for label, port in service.ports.items() if port_in_use(self.host, port)]
            if taken:
                raise StackError(
                    f"cannot start {service.name}: port {', '.join(taken)} on {self.host} is already in use by another "
                    "process; free it or choose another port (stack.*_port in the config; with make, OVERRIDES=stack.<name>_port=N)"
                )
            record = spawn(service.command, log=self._log(service.name), pidfile=self._pidfile(service.name),
                           env=service.env, cwd=self.state_dir)
            try:
                wait_until(lambda s=service: _http_ok(s.health_url, s.health_headers), timeout_s=self.config.start_timeout_s,
                           what=service.name, log=self._log(service.name), record=record)
                if service.after_start:
                    service.after_start()
            except Exception:
                terminate(record)
                self._pidfile(service.name).unlink(missing_ok=True)
                raise
            report(f"{service.name}: up at {service.url} (pid {record.pid}, log {self._log(service.name)})")

    def down(self, report: Callable[[str], None] = print) -> None:
        for service in reversed(self.services()):
            record = read_pidfile(self._pidfile(service.name))
            if record is None or record.process() is None:
                report(f"{service.name}: not running")
            else:
                ended = terminate(record)
                report(f"{service.name}: stopped ({len(ended)} processes)")
            self._pidfile(service.name).unlink(missing_ok=True)

    def status(self) -> dict[str, dict]:
        out = {}
        for service in self.services():
            record = self.running(service.name)
            out[service.name] = {
                "up": record is not None and _http_ok(service.health_url, service.health_headers),
                "pid": record.pid if record else None,
                "url": service.url,
                "log": str(self._log(service.name)),
            }
        return out

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.sh"

    def _write_env_file(self) -> None:
        """A shell file to ``source``; 0600 since it holds the stack's S3 key and Ray token."""
        lines = [f"export {key}={value}" for key, value in self.client_env().items()]
        write_private(self.env_file, "\n".join(lines) + "\n")

    @property
    def s3_identities_file(self) -> Path:
        return self.state_dir / "s3-identities.json"

    def _write_s3_identities(self) -> None:
        """SeaweedFS's S3 identities: the stack's key may do everything, anyone else nothing."""
        identity = {
            "name": "seedstory",
            "credentials": [{"accessKey": self.secrets.s3_access_key, "secretKey": self.secrets.s3_secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        write_private(self.s3_identities_file, json.dumps({"identities": [identity]}))
