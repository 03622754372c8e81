"""The checks of `bash course colab-check` (pip's dry-run report) and `bash course lowest` (bounds actually tested)."""

from __future__ import annotations

import json
import subprocess
import sys

from packaging.version import Version

from course_harness import envcheck
from course_utils import config


def pip_report(*installs: tuple[str, str]) -> dict:
    """The shape of `pip install --dry-run --report`: one entry per distribution pip would install."""
    return {"version": "1", "install": [{"metadata": {"name": name, "version": version}} for name, version in installs]}


def test_pip_report_passes_when_only_new_packages_come_in() -> None:
    report = pip_report(("opacus", "1.6.0"), ("peft", "0.13.2"), ("trustworthy-llm-course", "0.1.0"))
    assert envcheck.touched(report) == []


def test_pip_report_fails_on_each_of_colabs_own_packages() -> None:
    for name in ("torch", "Transformers", "datasets", "ipykernel", "ipywidgets"):
        assert envcheck.touched(pip_report(("opacus", "1.6.0"), (name, "9.9"))) == [f"{name} 9.9"], name


def test_pip_report_command_exits_1_with_the_offender(tmp_path, capsys) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(pip_report(("torch", "2.13.0"))))
    assert envcheck.main(["pip-report", str(path)]) == 1
    assert "pip would install torch 2.13.0" in capsys.readouterr().err
    path.write_text(json.dumps(pip_report(("cleanlab", "2.6.0"))))
    assert envcheck.main(["pip-report", str(path)]) == 0


def test_lower_bounds_come_from_pyproject() -> None:
    bounds = envcheck.lower_bounds(config.repo_root() / "pyproject.toml", ["test"])
    assert bounds["torch"] == Version("2.6") and bounds["opacus"] == Version("1.6") and "pytest" in bounds
    assert "jupyterlab" not in bounds and "ipykernel" in bounds


def test_above_bounds_flags_versions_the_bound_does_not_describe() -> None:
    bounds = {"torch": Version("2.6"), "numpy": Version("1.26"), "peft": Version("0.13")}
    assert envcheck.above_bounds(bounds, {"torch": "2.6.0+cu124", "numpy": "1.26.0", "peft": "0.13.2"}) == []
    assert envcheck.above_bounds(bounds, {"torch": "2.7.1", "numpy": "1.26.4"}) == [
        "peft: not installed (bound >=0.13)",
        "torch: 2.7.1 installed, declared bound >=2.6",
    ]


def test_installed_versions_reads_another_interpreter() -> None:
    found = envcheck.installed_versions(sys.executable)
    assert (
        found["numpy"]
        == subprocess.run(
            [sys.executable, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
