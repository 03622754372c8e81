"""The course as an installed package, away from any checkout: build the wheel, install it into a fresh virtual
environment, and run a notebook (fast mode) through the `course` console script from a folder holding only the
notebook. The notebook is chapter 02's first part (differential privacy, about 20 s): it reads the data assets, the
pretrained encoder and the course's packages like every chapter, and costs a sixth of chapter 00, which the notebook
suite runs anyway. The environment reuses this one's dependencies and the cache's assets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from course_utils import config

ROOT = config.repo_root()
CACHED = ("downloads", "assets", "checkpoints", "features")  # shared with the real cache: nothing is retrained


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course's wheel, built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("trustworthy_llm_course-*.whl")
    return built


def test_wheel_holds_both_packages_the_split_file_and_the_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("course_utils", "course_utils/checks", "course_harness"):
        assert f"{package}/__init__.py" in names, package
    assert "course_utils/splits/movie.json" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "course = course_harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment outside the checkout with the wheel installed; dependencies come from this one."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # a plain path line: this environment's packages become importable, its .pth files (the editable course) do not run
    (purelib / "_course_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return env


def installed_env(tmp_path: Path) -> dict[str, str]:
    """An environment for the installed course: fast mode, a private cache sharing the real cache's contents."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in CACHED:
        if (config.cache_dir() / name).exists():
            (cache / name).symlink_to(config.cache_dir() / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COURSE_", "PYTHON"))}
    return {**env, "COURSE_FAST": "1", "COURSE_CACHE": str(cache)}


def test_installed_course_runs_a_chapter_from_a_plain_folder(venv: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "02_differential_privacy.ipynb", work / "notebooks")
    env = installed_env(tmp_path)
    code = (
        "import json, course_utils, course_harness; from course_utils import config, data\n"
        "print(json.dumps({'utils': course_utils.__file__, 'harness': course_harness.__file__, "
        "'checkout': str(config.checkout()), 'results': str(config.results_dir()), "
        "'test_ids': len(data.split_spec()['test'])}))"
    )
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=work, env=env, check=True, capture_output=True, text=True
    )
    found = json.loads(probe.stdout)
    site = venv.resolve()
    assert Path(found["utils"]).resolve().is_relative_to(site), found  # not the checkout's editable copy
    assert Path(found["harness"]).resolve().is_relative_to(site), found
    assert found["checkout"] == "None" and found["test_ids"] == 1057
    results = Path(env["COURSE_CACHE"]) / "results"
    assert Path(found["results"]) == results

    course = str(venv / "bin" / "course")
    for argv in (["--root", str(work), "run", "--only", "7"], ["run", "--root", str(work), "--only", "7"]):
        wrong = subprocess.run([course, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert wrong.returncode == 2 and f"no notebook numbered 07 in {work / 'notebooks'}" in wrong.stderr, wrong

    done = subprocess.run(
        [course, "run", "--only", "02"], cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 02_differential_privacy | ok | " in done.stdout
    figures = json.loads((results / "figures" / "02_differential_privacy.json").read_text())
    assert figures["grad_max_diff"] < 1e-5 and figures["rdp_max_rel_diff"] < 1e-6, figures  # DP-SGD matches Opacus
    assert (results / "executed" / "02_differential_privacy.ipynb").exists()
    assert not (work / "results").exists() and not list(site.rglob("figures/02_differential_privacy.json"))
