"""Run chapter 03's Flower app on Flower's engines as child processes the course starts AND stops (chapter 03).

`simulate` runs the simulation engine (Ray) in a child process; `deploy` starts a SuperLink and N SuperNodes as
separate processes on 127.0.0.1, submits the app with `flwr run`, and tears everything down. Both:
- put Flower's and Ray's files in a fresh temporary folder (FLWR_HOME, RAY_TMPDIR), never ~/.flwr or /tmp/ray;
- switch off telemetry, update checks and run-time dependency installation (`flwr run` would otherwise build a
  fresh environment and download packages);
- tag every process they start with COURSE_PROC_TAG (`processes.py`) in its environment and, on exit, failure,
  Ctrl-C or SIGTERM, stop every process carrying the tag (Ray's actors and Flower's SuperExec children included):
  SIGTERM, then SIGKILL after a grace period.
In Flower 1.42 a SuperLink serves its APIs over HTTP on one `--host`/`--port` (the older `--fleet-api-address` and
`--control-api-address` are deprecated). Moving to several machines: start the SuperLink on one (`--host 0.0.0.0`,
TLS certificates instead of `--insecure`), a SuperNode on each data holder (`--superlink HOST:PORT`,
`--root-certificates`, optionally `--auth-supernode-private-key`), and point `flwr run` at it (README, chapter 03).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import processes
from .flower_app import DEFAULTS
from .processes import TAG

GRACE_S = processes.GRACE_S
tagged_processes = processes.tagged_processes
stop_tagged = processes.stop_tagged
listening_port = processes.listening_port
wait_for_port = processes.wait_for_port
_start = processes.start


def check_port_free(port: int, host: str = "127.0.0.1") -> int:
    """Return `port` if nothing listens on host:port, else a one-line error naming the fix."""
    return processes.check_port_free(port, host, fix="pass another --base-port")


def flower_env(folder: Path, tag: str) -> dict[str, str]:
    """The environment of every Flower process: private folders, no telemetry, no installs, our tag."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(folder / "flwr-home"),
            "RAY_TMPDIR": str(folder / "ray"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            TAG: tag,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    for sub in ("flwr-home", "ray"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return env


def flower_session(keep: bool = False):
    """A temporary folder and tag for one engine run (`processes.session`): every tagged process stopped on exit."""
    return processes.session(prefix="course-flwr-", keep=keep)


# ---------------------------------------------------------------------------------------------- simulation


def _simulate_child(overrides: dict, num_supernodes: int) -> None:
    """Inside the child process: run_simulation with Ray limited to this machine's cores."""
    from flwr.simulation import run_simulation

    from .flower_app import make_apps  # noqa: PLC0415 - the child imports flwr's simulation only here

    server, client = make_apps(overrides)
    cores = os.cpu_count() or 1
    run_simulation(
        server,
        client,
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "include_dashboard": False, "object_store_memory": 200 * 1024**2},
        },
    )


def simulate(overrides: dict | None = None, num_supernodes: int = 3, timeout: float = 300.0) -> dict:
    """Flower's simulation engine (Ray) on the chapter's app, in a child process; returns the ServerApp's result
    (accuracy by round, replies and failures by round, seconds) plus the wall time."""
    if isinstance(num_supernodes, bool) or not isinstance(num_supernodes, int) or num_supernodes < 1:
        raise ValueError(f"num_supernodes must be a positive integer, got {num_supernodes!r}")
    with flower_session() as (folder, tag):
        result = folder / "result.json"
        settings = {**(overrides or {}), "result-path": str(result), "min-nodes": num_supernodes}
        started = time.perf_counter()
        proc = _start(
            [sys.executable, "-m", "course_utils.flower_run", "simulate", json.dumps(settings), str(num_supernodes)],
            flower_env(folder, tag),
            folder / "simulation.log",
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the simulation did not finish within {timeout:g} s; see its log") from None
        if proc.returncode != 0 or not result.exists():
            tail = (folder / "simulation.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the simulation failed (exit {proc.returncode}); log tail:\n{tail}")
        out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - started
    out["tag"] = tag
    return out


# ---------------------------------------------------------------------------------------------- deployment

APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "course-federated"
version = "1.0.0"
description = "Chapter 03 of Trustworthy LLM Engineering on Flower's deployment engine"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "trustworthy-llm-course"

[tool.flwr.app.components]
serverapp = "course_fl_app:server_app"
clientapp = "course_fl_app:client_app"

[tool.flwr.app.config]
"""


def write_app(folder: Path, port: int) -> Path:
    """A minimal Flower app that imports the course's apps, and the federation `deploy` in FLWR_HOME/config.toml."""
    app = folder / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(
        APP_PYPROJECT + "".join(f"{key} = {json.dumps(value)}\n" for key, value in DEFAULTS.items())
    )
    (app / "course_fl_app.py").write_text(  # top-level assignments: Flower checks the names without importing
        "from course_utils import flower_app\n\n"
        "server_app = flower_app.server_app\nclient_app = flower_app.client_app\n"
    )
    (folder / "flwr-home" / "config.toml").write_text(
        f'[superlink.deploy]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    return app


def _run_config(settings: dict) -> str:
    """`flwr run --run-config` syntax: space-separated key=value, strings quoted."""
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in settings.items())


def deploy(
    overrides: dict | None = None, supernodes: int = 2, base_port: int = 9191, timeout: float = 240.0, log=print
) -> dict:
    """SuperLink + `supernodes` SuperNodes on 127.0.0.1 (separate processes), `flwr run` of the chapter's app,
    then everything stopped. Returns the ServerApp's result plus wall times."""
    if isinstance(supernodes, bool) or not isinstance(supernodes, int) or supernodes < 1:
        raise ValueError(f"supernodes must be a positive integer, got {supernodes!r}")
    ports = [check_port_free(base_port + i) for i in range(1 + supernodes)]
    started = time.perf_counter()
    with flower_session() as (folder, tag):
        env = flower_env(folder, tag)
        app = write_app(folder, ports[0])
        bin_ = Path(sys.executable).parent
        _start(
            [
                str(bin_ / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports[0]),
                "--database",
                str(folder / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
            env,
            folder / "superlink.log",
        )
        wait_for_port(ports[0])
        for i in range(supernodes):
            _start(
                [
                    str(bin_ / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{ports[0]}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports[1 + i]),
                    "--node-config",
                    f"partition-id={i} num-partitions={supernodes}",
                ],
                env,
                folder / f"supernode{i}.log",
            )
        log(f"SuperLink on 127.0.0.1:{ports[0]}, {supernodes} SuperNodes on :{ports[1]}-{ports[-1]}; logs in {folder}")
        result = folder / "result.json"
        settings = {**(overrides or {}), "result-path": str(result), "min-nodes": supernodes}
        run = subprocess.run(
            [str(bin_ / "flwr"), "run", str(app), "deploy", "--stream", "--run-config", _run_config(settings)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if not result.exists():
            logs = "\n".join(p.read_text(errors="replace")[-600:] for p in sorted(folder.glob("*.log")))
            raise RuntimeError(
                f"the deployment run failed (flwr run exit {run.returncode}): "
                f"{(run.stdout + run.stderr)[-1500:]}\n{logs}"
            )
        out = json.loads(result.read_text())
        out["run_s"] = time.perf_counter() - started
    out["wall_s"] = time.perf_counter() - started
    out["tag"] = tag
    return out


def main(argv: list[str]) -> int:
    """`python -m course_utils.flower_run simulate SETTINGS_JSON N` (what `simulate` starts)."""
    if len(argv) == 3 and argv[0] == "simulate":
        _simulate_child(json.loads(argv[1]), int(argv[2]))
        return 0
    print("usage: python -m course_utils.flower_run simulate SETTINGS_JSON NUM_SUPERNODES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
