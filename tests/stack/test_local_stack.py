import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import boto3
import psutil
import pytest
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from seedstory.stack import LocalStack, StackError
from seedstory.stack.local import S3_INTERNAL_PORTS
from seedstory.stack.processes import read_pidfile, spawn, terminate
from tests.conftest import free_stack_config


def _listening(pids: set[int]) -> dict[int, list[str]]:
    """The TCP addresses each process listens on."""
    out: dict[int, list[str]] = {}
    for pid in pids:
        try:
            sockets = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out[pid] = [s.laddr.ip for s in sockets if s.status == psutil.CONN_LISTEN]
    return out


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # Ray's gRPC: ::ffff:127.0.0.1


def _tree(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {pid, *(p.pid for p in proc.children(recursive=True))}


def _s3_client(stack: LocalStack, secret: str | None = None):
    """A client with explicit credentials: boto3's default session keeps the first ones it read."""
    env = stack.client_env()
    return boto3.client("s3", endpoint_url=stack.s3_url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=secret or env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"])


def _status_code(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_up_status_up_down_leaves_nothing(tmp_path):
    stack = LocalStack(free_stack_config(tmp_path / "state"), bucket="lifecycle")
    messages: list[str] = []
    try:
        stack.up(report=messages.append)
        status = stack.status()
        assert all(s["up"] for s in status.values()), status
        pids = {name: s["pid"] for name, s in status.items()}
        trees = {name: _tree(pid) for name, pid in pids.items()}
        tree = set().union(*trees.values())

        # Every service, Ray's GCS, raylet, agents and workers included, listens on loopback only.
        for name in ("s3", "mlflow", "ray"):
            addresses = [ip for ips in _listening(trees[name]).values() for ip in ips]
            assert addresses and all(_loopback(ip) for ip in addresses), (name, addresses)
        # And Ray refuses a local client without the stack's token.
        assert _status_code(f"{stack.ray_dashboard_url}/api/jobs/") == 401
        assert _status_code(f"{stack.ray_dashboard_url}/api/jobs/", stack.ray_auth_headers) == 200
        without_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        attempt = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={stack.ray_gcs_address!r}); print('CONNECTED')"],
            env={**without_token, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120,
        )
        assert attempt.returncode != 0 and "CONNECTED" not in attempt.stdout, attempt.stdout
        for name in ("secrets.json", "env.sh", "s3-identities.json"):
            assert (tmp_path / "state" / name).stat().st_mode & 0o077 == 0, name

        messages.clear()
        stack.up(report=messages.append)
        assert all("already up" in m for m in messages), messages
        assert {name: s["pid"] for name, s in stack.status().items()} == pids
    finally:
        stack.down(report=lambda _: None)
    status = stack.status()
    assert not any(s["up"] or s["pid"] for s in status.values()), status
    leftovers = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert leftovers == []
    assert not list((tmp_path / "state").glob("*.pid"))


@pytest.mark.parametrize("label", ["S3 API", "filer gRPC"])
def test_taken_port_is_named(tmp_path, label):
    config = free_stack_config(tmp_path / "state")
    port = config.s3_port if label == "S3 API" else config.s3_internal_ports_from + S3_INTERNAL_PORTS.index(label)
    with socket.socket() as blocker:
        blocker.bind((config.host, port))
        blocker.listen()
        with pytest.raises(StackError, match=rf"port {port} \(s3 {label}\).*already in use"):
            LocalStack(config).up(report=lambda _: None)
    assert not (tmp_path / "state" / "s3.pid").exists()


def test_objects_runs_and_models_survive_a_restart(tmp_path, monkeypatch):
    stack = LocalStack(free_stack_config(tmp_path / "state"), bucket="durable")
    try:
        stack.up(only=["s3", "mlflow"], report=lambda _: None)
        for key, value in stack.client_env().items():
            monkeypatch.setenv(key, value)
        _s3_client(stack).put_object(Bucket="durable", Key="exports/model/weights.bin", Body=b"\x01" * 300_000)
        client = MlflowClient(stack.mlflow_url)
        experiment = client.create_experiment("restart")
        run = client.create_run(experiment)
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "weights.txt").write_text("trained")
        client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
        client.create_registered_model("durable-model")
        version = client.create_model_version("durable-model", f"runs:/{run.info.run_id}/model", run.info.run_id)

        stack.down(report=lambda _: None)
        stack.up(only=["s3", "mlflow"], report=lambda _: None)

        body = _s3_client(stack).get_object(Bucket="durable", Key="exports/model/weights.bin")["Body"].read()
        assert body == b"\x01" * 300_000
        client = MlflowClient(stack.mlflow_url)
        restored = client.get_model_version("durable-model", version.version)
        assert (restored.run_id, restored.source) == (run.info.run_id, f"runs:/{run.info.run_id}/model")
        local = client.download_artifacts(restored.run_id, "model", str(tmp_path / "back"))
        assert (Path(local) / "weights.txt").read_text() == "trained"
    finally:
        stack.down(report=lambda _: None)


def test_object_store_refuses_strangers(s3):
    _s3_client(s3).put_object(Bucket=s3.bucket, Key="private/secret.txt", Body=b"ours")
    assert _status_code(f"{s3.s3_url}/{s3.bucket}/private/secret.txt") == 403
    with pytest.raises(ClientError) as refused:
        _s3_client(s3, secret="not-the-key").get_object(Bucket=s3.bucket, Key="private/secret.txt")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_pid_record_follows_its_process_through_a_clock_step_but_not_to_a_reused_pid(tmp_path, monkeypatch):
    record = spawn([sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "log",
                   pidfile=tmp_path / "pid", env=os.environ, cwd=tmp_path)
    try:
        assert read_pidfile(tmp_path / "pid") == record and record.process() is not None
        # The wall clock steps 7 s: the kernel's boot time moves with it, and psutil's date of the process too.
        booted, dated = psutil.boot_time(), psutil.Process(record.pid).create_time()
        monkeypatch.setattr(psutil._psplatform, "boot_time", lambda: booted + 7)
        assert psutil.Process(record.pid).create_time() == pytest.approx(dated + 7)
        assert record.process() is not None
        monkeypatch.undo()
        assert replace(record, command=(sys.executable, "-c", "another program")).process() is None
        assert replace(record, started_after_boot=record.started_after_boot - 60).process() is None
    finally:
        terminate(record)
    assert record.process() is None


SUPERVISOR = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])
def stop(*_):
    time.sleep(0.5)  # stopping in order takes a supervisor a while
    worker.send_signal(signal.SIGUSR1)
    worker.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(120)
"""
WORKER = """
import signal, sys, time
def record(name):
    def handler(*_):
        open(sys.argv[1], "a").write(name)
        sys.exit(0)
    return handler
signal.signal(signal.SIGTERM, record("stopped by SIGTERM"))
signal.signal(signal.SIGUSR1, record("stopped by its supervisor"))
open(sys.argv[1], "w").write("ready")
time.sleep(120)
"""


def test_a_leader_stops_its_own_processes_before_anyone_else_signals_them(tmp_path):
    """As ``ray start --block`` does: Ray's processes signalled all at once outlive the stop's timeout."""
    (tmp_path / "supervisor.py").write_text(SUPERVISOR)
    (tmp_path / "worker.py").write_text(WORKER)
    said = tmp_path / "worker.said"
    record = spawn([sys.executable, str(tmp_path / "supervisor.py"), str(tmp_path / "worker.py"), str(said)],
                   log=tmp_path / "log", pidfile=tmp_path / "pid", env=os.environ, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (said.exists() and said.read_text() == "ready"):
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.1)
    worker = psutil.Process(record.pid).children()[0]
    said.write_text("")
    ended = terminate(record)
    assert said.read_text() == "stopped by its supervisor"
    assert sorted(ended) == sorted([record.pid, worker.pid]) and record.process() is None
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE


def test_down_without_up_is_harmless(tmp_path):
    stack = LocalStack(free_stack_config(tmp_path / "state"))
    messages: list[str] = []
    stack.down(report=messages.append)
    assert messages == ["ray: not running", "mlflow: not running", "s3: not running"]
