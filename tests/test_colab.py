"""Colab: every notebook's install cell and badge come from config.REPO_URL / REPO_REF, and the cell cannot break
Colab's runtime (it pins what Colab already has, installs only the course, and fails with one clear message)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from course_harness import colab, notebooks
from course_utils import config

ROOT = config.repo_root()


def install_cell_of(path: Path) -> str:
    """The source of a notebook's Colab install cell (its second cell)."""
    cell = notebooks.read_notebook(path).cells[1]
    assert colab.is_install_cell(cell), f"{path}: cell 1 is not the Colab install cell"
    return cell.source


@pytest.mark.parametrize("path", notebooks.notebook_files(ROOT), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_install_cell_and_badge_match_config(path: Path) -> None:
    source = install_cell_of(path)
    assert f'COURSE = "{config.PACKAGE} @ git+{config.REPO_URL}@{config.REPO_REF}"' in source
    assert source == colab.install_cell(hub="USE_HUB" in source)
    assert "--upgrade" not in source and "-U" not in source.split()
    # the exercise notebook is what learners open, so solutions link to their exercise twin
    folder = "exercises" if path.parent.name == "solutions" else path.parent.name
    badge = notebooks.read_notebook(path).cells[0].source
    assert f"({config.colab_url(f'{folder}/{path.name}')})" in badge
    assert badge.count("colab.research.google.com/github/") == 1


@pytest.fixture()
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Record the commands run through subprocess.run instead of running them; `exit` sets their return code."""
    pip = types.SimpleNamespace(calls=[], exit=0)

    def run(cmd, *args, **kwargs):
        pip.calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, pip.exit)

    monkeypatch.setattr(subprocess, "run", run)
    return pip


def run_cell(source: str, monkeypatch: pytest.MonkeyPatch, in_colab: bool) -> dict:
    """Execute a cell's source the way a kernel would, inside or outside a (fake) Colab."""
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    namespace: dict = {}
    exec(compile(source, "install-cell", "exec"), namespace)  # noqa: S102 (the cell is the course's own code)
    return namespace


def test_install_cell_does_nothing_outside_colab(fake_pip, monkeypatch: pytest.MonkeyPatch) -> None:
    run_cell(colab.install_cell(hub=True), monkeypatch, in_colab=False)
    assert fake_pip.calls == []


def test_install_cell_installs_only_the_course_keeping_colabs_packages(
    fake_pip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COURSE_MODE", raising=False)
    run_cell(colab.install_cell(hub=True), monkeypatch, in_colab=True)
    (cmd,) = fake_pip.calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[-1] == config.install_spec()
    assert "--upgrade" not in cmd and "--force-reinstall" not in cmd and "-U" not in cmd
    pins = Path(cmd[cmd.index("-c") + 1]).read_text().split()
    for name in ("torch", "transformers", "datasets", "ipykernel", "ipywidgets"):  # all installed here
        assert f"{name}=={importlib.metadata.version(name)}" in pins, (name, pins)
    assert "COURSE_MODE" not in os.environ  # USE_HUB = False by default


def test_a_failed_install_stops_with_one_clear_message(fake_pip, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip.exit = 1
    with pytest.raises(SystemExit) as stop:
        run_cell(colab.install_cell(), monkeypatch, in_colab=True)
    message = str(stop.value)
    assert message.startswith("Installing the course failed (pip exit 1") and config.install_spec() in message


def test_a_fork_changes_repo_url_and_ref_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit config.REPO_URL / REPO_REF, run `clean`: every install cell and badge follows; `clean --check` saw it."""
    for folder in notebooks.FOLDERS:
        (tmp_path / folder).mkdir()
        shutil.copy(ROOT / folder / "00_finetuning.ipynb", tmp_path / folder)
    monkeypatch.setattr(config, "REPO_URL", "https://github.com/someone/course-fork")
    monkeypatch.setattr(config, "REPO_REF", "spring-2027")

    def stale() -> list[str]:
        return [line for line in notebooks.clean_all(tmp_path, check=True) if "config.REPO_URL/REPO_REF" in line]

    assert len(stale()) == 6  # install cell and badge of each of the three notebooks
    assert len(notebooks.clean_all(tmp_path)) == 3 and stale() == []
    for folder in notebooks.FOLDERS:
        nb = notebooks.read_notebook(tmp_path / folder / "00_finetuning.ipynb")
        assert "git+https://github.com/someone/course-fork@spring-2027" in nb.cells[1].source
        assert "colab.research.google.com/github/someone/course-fork/blob/spring-2027/" in nb.cells[0].source
        assert "trustworthy-llm/course" not in nb.cells[0].source + nb.cells[1].source
