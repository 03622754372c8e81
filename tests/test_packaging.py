"""Packaging: pyproject's dependencies and bounds, the hashed lock, environment.yml, the licence, CI's command."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from course_harness import envcheck

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNNER = {"nbformat", "nbclient", "ipykernel", "psutil", "pyzmq", "traitlets"}  # what `course run` needs too
# psutil: chapter 03 too; ipywidgets: chapter 05's explorer widget is learners' code (Colab pins 7.7.1)
NOTEBOOK_TOOLS = RUNNER - {"psutil"} | {"jupyterlab", "nbval", "pytest"}
IMPORT_NAMES = {"sklearn": "scikit-learn", "zmq": "pyzmq"}  # import name -> distribution name, where they differ


def specs(*groups: str) -> dict[str, SpecifierSet]:
    """name -> specifier of the runtime dependencies ("runtime") and of the named extras."""
    found: dict[str, SpecifierSet] = {}
    for group in groups:
        for text in PROJECT["dependencies"] if group == "runtime" else PROJECT["optional-dependencies"][group]:
            req = Requirement(text)
            if canonicalize_name(req.name) != canonicalize_name(PROJECT["name"]):
                found[canonicalize_name(req.name)] = req.specifier
    return found


def lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) of requirements-lock.txt."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = (match[2], [])
        elif line.strip().startswith("--hash=sha256:") and current:
            pins[current][1].append(line.strip())
    return pins


def third_party_imports(folder: Path) -> set[str]:
    """Distribution names of every module imported (at any depth, lazily too) by the .py files under `folder`."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    names -= set(sys.stdlib_module_names) | {"course_utils", "course_harness", "__future__"}
    return {canonicalize_name(IMPORT_NAMES.get(name, name)) for name in names}


def test_runtime_dependencies_are_exactly_what_learners_code_imports():
    assert third_party_imports(ROOT / "course_utils") == set(specs("runtime"))


def test_notebook_tooling_lives_in_extras():
    assert not set(specs("runtime")) & NOTEBOOK_TOOLS
    assert RUNNER <= set(specs("test")) and RUNNER <= set(specs("lab"))
    assert {"ipywidgets", "jupyterlab"} <= set(specs("lab")) and {"pytest", "nbval"} <= set(specs("test"))
    dev = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    assert any(r.name == PROJECT["name"] and r.extras == {"test", "lab"} for r in dev)
    harness = third_party_imports(ROOT / "course_harness") - set(specs("runtime"))
    assert harness <= set(specs("test")) | {"accelerate"}, harness  # accelerate: transformers' Trainer, via peft


def test_every_bound_admits_colabs_pins_and_both_widget_generations():
    bounds = {**specs("runtime"), **specs("lab")}
    for name, version in envcheck.COLAB_PINS.items():
        assert bounds[name].contains(version), (name, str(bounds[name]), version)
    assert bounds["ipywidgets"].contains("7.7.1") and bounds["ipywidgets"].contains("8.1.9")
    assert str(bounds["torch"]) == ">=2.6"  # opacus 1.6 needs torch 2.6


def test_python_licence_console_script_and_package_data():
    assert PROJECT["requires-python"] == ">=3.11"
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]  # SPDX `license` needs setuptools 77
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 Trustworthy LLM Engineering contributors" in text
    assert PROJECT["scripts"]["course"] == "course_harness.cli:main"
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["course_utils"] == ["splits/*.json"]
    assert (ROOT / "course_utils" / "splits" / "movie.json").is_file()


def test_lock_is_hashed_complete_and_within_the_bounds():
    pins = lock()
    for name, (_version, hashes) in pins.items():
        assert hashes, f"{name} has no --hash in requirements-lock.txt; regenerate it with `bash course lock`"
    for name, spec in {**specs("runtime"), **specs("test"), **specs("lab")}.items():
        assert name in pins, f"{name} missing from requirements-lock.txt"
        assert spec.contains(pins[name][0]), (name, str(spec), pins[name][0])
    assert pins["torch"] == ("2.13.0+cpu", pins["torch"][1]) and len(pins["torch"][1]) == 1  # the CPU build only


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == ["--extra-index-url https://download.pytorch.org/whl/cpu", "-r requirements-lock.txt"]
    # pip refuses editable requirements in hash-checking mode, so the course is installed by a second command
    assert "pip install --no-deps -e ." in (ROOT / "environment.yml").read_text()
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert SpecifierSet(PROJECT["requires-python"]).contains(python.split("=")[1] + ".0")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^exec bash course test$", ci, re.MULTILINE)
    assert "bash course test" in readme and "bash course run" in readme


def test_course_script_installs_the_lock_hash_checked():
    script = (ROOT / "course").read_text()
    assert "--require-hashes -r requirements-lock.txt" in script
    assert not re.search(r"pip install[^\n]* torch==", script), "an unhashed torch install would bypass the lock"
    test_command = re.search(r"^  test\)\n(.*?);;", script, re.MULTILINE | re.DOTALL)[1]
    assert "lowest" not in test_command and "colab" not in test_command  # the two slow checks are separate
