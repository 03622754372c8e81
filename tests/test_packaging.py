"""Packaging: pyproject, environment.yml and the lock agree; CI runs the README's test command."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in reqs}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower().replace("_", "-")] = str(req.specifier).removeprefix("==")
    return pins


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in pip_section if not r.startswith("-e")}
    assert listed == _pyproject_requirements()
    assert "python=3.11" in env["dependencies"]


def test_lock_pins_every_dependency_within_its_lower_bound():
    pins = _lock()
    for name, spec in _pyproject_requirements().items():
        key = name.replace("_", "-")
        assert key in pins, f"{name} missing from requirements-lock.txt"
        assert Requirement(f"{name}{spec}").specifier.contains(pins[key]), (name, spec, pins[key])
    assert pins["torch"] == "2.13.0"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^exec bash course test$", ci, re.M)
    assert "bash course test" in readme and "bash course run" in readme


def test_course_script_installs_torch_pinned_first():
    script = (ROOT / "course").read_text()
    torch_at = script.index("torch==2.13.0")
    assert torch_at < script.index("-r requirements-lock.txt")
