"""Flower (chapter 03): the deployment engine runs 2 SuperNodes x 2 rounds in < 3 min, survives a crashing and a
silent client, and leaves no process or port behind, also when interrupted with Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from course_utils import flower_run

SETTINGS = {"train-size": 300, "test-size": 200, "seed": 0}


def _ports_free(base: int, count: int) -> bool:
    """Nothing listens on any of the ports (connections in TIME_WAIT after a clean close do not count)."""
    for port in range(base, base + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def _flower_processes() -> list[str]:
    names = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "flower-super" in line or "flwr-serverapp" in line or "flwr-clientapp" in line or "ray::" in line:
            names.append(line[:120])
    return names


def test_a_port_in_use_is_refused_in_one_line() -> None:
    with flower_run.listening_port() as busy:
        with pytest.raises(ValueError, match=f"port {busy} on 127.0.0.1 is in use; stop what listens there"):
            flower_run.check_port_free(busy)
        with pytest.raises(ValueError, match="is in use"):
            flower_run.deploy(SETTINGS, supernodes=2, base_port=busy - 1)


def test_deployment_two_supernodes_two_rounds_under_three_minutes_and_nothing_left() -> None:
    before = _flower_processes()
    result = flower_run.deploy({**SETTINGS, "rounds": 2}, supernodes=2, base_port=9311)
    assert result["wall_s"] < 180, result["wall_s"]
    assert sorted(result["accuracy"]) == ["0", "1", "2"] and result["accuracy"]["2"] > 0.55
    assert result["replies"] == {"1": {"ok": 2, "failed": 0}, "2": {"ok": 2, "failed": 0}}
    assert flower_run.tagged_processes(result["tag"]) == []
    assert _flower_processes() == before and _ports_free(9311, 3)


def test_deployment_round_completes_without_a_crashed_and_a_silent_client() -> None:
    faults = {"crash-partition": 1, "sleep-partition": 2, "sleep-seconds": 40.0, "timeout": 20.0}
    result = flower_run.deploy({**SETTINGS, "rounds": 2, **faults}, supernodes=3, base_port=9331, timeout=300)
    assert result["replies"]["1"] == {"ok": 1, "failed": 1}  # the silent one never answered round 1
    assert result["replies"]["2"]["failed"] == 1 and result["replies"]["2"]["ok"] >= 1  # the crasher crashes again
    assert flower_run.tagged_processes(result["tag"]) == [] and _ports_free(9331, 4)


def test_ctrl_c_stops_every_process_the_command_started() -> None:
    before = _flower_processes()
    cmd = [sys.executable, "-m", "course_harness", "federated", "--base-port", "9351", "--rounds", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and _ports_free(9351, 3):
        time.sleep(0.5)
    time.sleep(5)  # the nodes are up and the run is starting
    assert not _ports_free(9351, 3), "the deployment never started"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    time.sleep(1)
    assert _flower_processes() == before and _ports_free(9351, 3)
