import socket

import psutil
import pytest

from seedstory.stack import LocalStack, StackError
from tests.conftest import free_stack_config


def test_up_status_up_down_leaves_nothing(tmp_path):
    stack = LocalStack(free_stack_config(tmp_path / "state"), bucket="lifecycle")
    messages: list[str] = []
    try:
        stack.up(report=messages.append)
        status = stack.status()
        assert all(s["up"] for s in status.values()), status
        pids = {name: s["pid"] for name, s in status.items()}
        tree = set()
        for pid in pids.values():
            proc = psutil.Process(pid)
            tree |= {pid, *(p.pid for p in proc.children(recursive=True))}

        messages.clear()
        stack.up(report=messages.append)
        assert all("already up" in m for m in messages), messages
        assert {name: s["pid"] for name, s in stack.status().items()} == pids
        assert (tmp_path / "state" / "env.sh").stat().st_mode & 0o077 == 0
    finally:
        stack.down(report=lambda _: None)
    status = stack.status()
    assert not any(s["up"] or s["pid"] for s in status.values()), status
    leftovers = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert leftovers == []
    assert not list((tmp_path / "state").glob("*.pid"))


def test_taken_port_is_named(tmp_path):
    config = free_stack_config(tmp_path / "state")
    with socket.socket() as blocker:
        blocker.bind((config.host, config.s3_port))
        blocker.listen()
        with pytest.raises(StackError, match=rf"port {config.s3_port} \(s3 S3 API\).*already in use"):
            LocalStack(config).up(report=lambda _: None)
    assert not (tmp_path / "state" / "s3.pid").exists()


def test_down_without_up_is_harmless(tmp_path):
    stack = LocalStack(free_stack_config(tmp_path / "state"))
    messages: list[str] = []
    stack.down(report=messages.append)
    assert messages == ["ray: not running", "mlflow: not running", "s3: not running"]
