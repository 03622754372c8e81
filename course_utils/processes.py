"""Child processes the course starts and always stops, and loopback ports (chapters 03 and 07).

Every process a chapter starts (Flower's SuperLink and SuperNodes, the course's HTTP service) carries a tag in its
environment; on exit, failure, Ctrl-C or SIGTERM every process with the tag is stopped: SIGTERM, then SIGKILL after a
grace period. Tagging by environment also finds grandchildren (uvicorn's workers, Ray's actors) that a process group
would miss once they start sessions of their own.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

TAG = "COURSE_PROC_TAG"
GRACE_S = 5.0
LOOPBACK = "127.0.0.1"


def check_port_free(port: int, host: str = LOOPBACK, fix: str = "pass another port") -> int:
    """Return `port` if nothing listens on host:port, else a one-line error naming the fix."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError(f"port must be an integer in 1024..65535, got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError:
            raise ValueError(f"port {port} on {host} is in use; stop what listens there or {fix}") from None
    return port


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the operating system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_listening(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


@contextmanager
def listening_port(host: str = LOOPBACK) -> Iterator[int]:
    """A port something listens on for the duration (to show the port-in-use error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen()
        yield sock.getsockname()[1]


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 60.0, what: str = "the server") -> None:
    """Block until something accepts connections on host:port (a just-started server), or raise TimeoutError."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if port_is_listening(port, host):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s; see {what}'s log")


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every running process whose environment carries COURSE_PROC_TAG=tag."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG) == tag:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
    return found


def stop_tagged(tag: str, grace: float = GRACE_S) -> int:
    """SIGTERM every process with the tag, SIGKILL what is left after `grace` seconds; returns how many."""
    procs = tagged_processes(tag)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(procs)


def in_main_thread() -> bool:
    """True in the main thread (only there may signal handlers be set)."""
    return threading.current_thread() is threading.main_thread()


@contextmanager
def session(prefix: str = "course-", keep: bool = False) -> Iterator[tuple[Path, str]]:
    """A temporary folder and tag for the processes of one run; on exit (also on error, Ctrl-C or SIGTERM) every
    tagged process is stopped and the folder removed."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    tag = uuid.uuid4().hex
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # turn SIGTERM into an exception so the finally block runs
        raise KeyboardInterrupt("SIGTERM")

    in_main = in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield folder, tag
    finally:
        stop_tagged(tag)
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start one process (its own session, no stdin), its output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
