"""What the pre-commit hooks check, run by the suite without git hooks: clean notebooks, exercises in sync, ruff.

`ruff format --check` fails until the code has been formatted once with `ruff format` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    """Run a command in the checkout with this interpreter, capturing its output."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def hooks() -> dict[str, dict]:
    """The hooks of .pre-commit-config.yaml by id, each with its repo's `rev`."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return {hook["id"]: {**hook, "rev": repo.get("rev")} for repo in config["repos"] for hook in repo["hooks"]}


def test_pre_commit_runs_these_checks_with_the_locked_ruff() -> None:
    found = hooks()
    assert {"ruff-check", "ruff-format", "course-notebooks-clean", "course-exercises-in-sync"} <= set(found)
    assert found["ruff-check"]["rev"] == f"v{importlib.metadata.version('ruff')}", (
        "set the ruff-pre-commit rev in .pre-commit-config.yaml to the ruff version in requirements-lock.txt"
    )
    assert found["course-notebooks-clean"]["entry"] == "python -m course_harness clean --check"
    assert found["course-exercises-in-sync"]["entry"] == "python -m course_harness exercises --check"


def test_notebooks_are_clean() -> None:
    done = run("-m", "course_harness", "clean", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_exercises_are_in_sync() -> None:
    done = run("-m", "course_harness", "exercises", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_check_passes() -> None:
    done = run("-m", "ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_check_passes() -> None:
    done = run("-m", "ruff", "format", "--check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout + done.stderr
