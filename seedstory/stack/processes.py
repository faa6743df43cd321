"""Start, identify and stop the stack's daemons by PID, never by name.

A PID file holds the PID and the process's start time: a recycled PID that now belongs to
someone else's process is never mistaken for ours, and never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """The local stack cannot do what was asked; the message says which service and why."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Two readings of one process's start can differ by the whole second the kernel's boot time may step
# between psutil's two reads of it (below); a reused PID differs by far more, and by its command line.
START_SLACK_S = 1.5


def started_after_boot(proc: psutil.Process) -> float:
    """When ``proc`` started, in seconds after boot. psutil dates a process from the kernel's boot time, which
    the kernel derives from the wall clock: a clock adjustment moves the date of a running process, not this."""
    return proc.create_time() - psutil.boot_time()


@dataclass(frozen=True)
class PidRecord:
    pid: int
    started_after_boot: float
    command: tuple[str, ...]

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None if it has exited (or the PID was reused)."""
        try:
            proc = psutil.Process(self.pid)
            # A script's interpreter comes first in its command line: the spawned command is its end.
            if (proc.status() == psutil.STATUS_ZOMBIE
                    or abs(started_after_boot(proc) - self.started_after_boot) > START_SLACK_S
                    or tuple(proc.cmdline()[-len(self.command):]) != self.command):
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone, or a reused PID of another user's
            return None

    def exited(self) -> bool:
        """Whether the process ``spawn`` just started has ended (gone, or a zombie not yet reaped). Only for
        that start-up: the unreaped child's PID cannot be reused, so no identity check can misread it."""
        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True


def read_pidfile(path: Path) -> PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return PidRecord(int(data["pid"]), float(data["started_after_boot"]), tuple(str(arg) for arg in data["command"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def spawn(command: Sequence[str], *, log: Path, pidfile: Path, env: Mapping[str, str], cwd: Path) -> PidRecord:
    """Start ``command`` as the leader of a new session, so that stopping it can take its whole group."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=cwd, start_new_session=True,
        )
    record = PidRecord(proc.pid, started_after_boot(psutil.Process(proc.pid)), tuple(command))
    pidfile.write_text(json.dumps({"pid": record.pid, "started_after_boot": record.started_after_boot,
                                   "command": list(record.command)}))
    return record


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
    return members


def terminate(record: PidRecord, timeout_s: float = 20.0) -> list[int]:
    """SIGTERM the leader first and give it the time to stop its own processes in its own order (``ray start
    --block`` stops Ray's in seconds, where Ray's processes signalled all at once outlive the timeout); then
    SIGTERM what is left of its process group and descendants, and SIGKILL what still runs. Returns the
    PIDs ended."""
    leader = record.process()
    if leader is None:
        return []
    try:
        tree = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = [leader]
    targets = {p.pid: p for p in [*tree, *_group_members(record.pid)]}
    deadline = time.monotonic() + timeout_s
    _send(signal.SIGTERM, [leader])
    psutil.wait_procs([leader], timeout=timeout_s)
    rest = [proc for proc in targets.values() if proc.is_running()]
    _send(signal.SIGTERM, rest)
    _, alive = psutil.wait_procs(rest, timeout=max(0.0, deadline - time.monotonic()))
    _send(signal.SIGKILL, alive)
    psutil.wait_procs(alive, timeout=5)
    return sorted(targets)


def _send(signum: int, procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # it may exit before its turn
            proc.send_signal(signum)


def wait_until(check, *, timeout_s: float, what: str, log: Path | None = None, record: PidRecord | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if record is not None and record.exited():
            raise StackError(f"{what} exited during start-up; see {log}:\n{_tail(log)}")
        time.sleep(0.25)
    raise StackError(f"{what} was not ready after {timeout_s:.0f}s; see {log}:\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
