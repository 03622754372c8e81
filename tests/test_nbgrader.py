"""nbgrader on a real chapter: the solutions notebook is an nbgrader source, its self-checks are autograded tests.

Chapter 01 is used because its solutions notebook runs fastest (about 9 s in fast mode on 2 cores); the whole test,
three autograded runs included, takes well under a minute when nothing else is running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nbgrader.api import Gradebook

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "01_data_preparation.ipynb"
CHECKS = 7  # exercises 1.1-1.7, one point each


def nbgrader(course: Path, *args: str) -> None:
    """Run one nbgrader command in the course folder; fail with its log if it fails."""
    # PATH: nbgrader runs `alembic` from the environment's bin folder; PYTHONPATH: the kernel imports course_utils
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "COURSE_FAST": "1",
        "COURSE_RESULTS": str(course / "results"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_nbgrader_grades_reference_full_and_stubs_zero(tmp_path: Path) -> None:
    course = tmp_path / "course"
    (course / "source" / "ch01").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / CHAPTER, course / "source" / "ch01" / CHAPTER)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 'course'\n"
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(course / 'gradebook.db')!r}\n"
        "c.Execute.timeout = 600\n"
    )
    nbgrader(course, "generate_assignment", "ch01", "--force")
    released = course / "release" / "ch01" / CHAPTER
    assert "### BEGIN SOLUTION" not in released.read_text()
    submissions = {
        "reference": ROOT / "solutions" / CHAPTER,  # the worked answers
        "nbgrader-stubs": released,  # what nbgrader releases
        "course-stubs": ROOT / "exercises" / CHAPTER,
    }  # what the course's generator ships
    for student, notebook in submissions.items():
        (course / "submitted" / student / "ch01").mkdir(parents=True)
        shutil.copy(notebook, course / "submitted" / student / "ch01" / CHAPTER)
    nbgrader(course, "autograde", "ch01", "--create")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {
            student: (
                gradebook.find_submission("ch01", student).score,
                gradebook.find_submission("ch01", student).max_score,
            )
            for student in submissions
        }
    assert scores == {"reference": (CHECKS, CHECKS), "nbgrader-stubs": (0, CHECKS), "course-stubs": (0, CHECKS)}
