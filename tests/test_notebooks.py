"""Tests for the notebook harness: exercises, cleaning and headless runs (tiny notebooks only)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_harness import notebooks
from course_harness.__main__ import main

STUB = 'raise NotImplementedError("Exercise: replace this line with your code")'


def solution_notebook() -> nbformat.NotebookNode:
    """A small solution notebook exercising every marker."""
    return new_notebook(
        cells=[
            new_markdown_cell("# 00 · Fine-tuning — Solutions\n\nIntro."),
            new_code_cell("import math\nx = 1"),
            new_code_cell(
                "# EXERCISE 0.3\ndef f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
                "    ### END SOLUTION\n\nprint(f(1))"
            ),
            new_code_cell("### BEGIN SOLUTION\nz = 2\n### END SOLUTION\nw = 3"),
            new_markdown_cell("<!-- SOLUTION -->\nWhy the answer is 2."),
            new_code_cell("print('only in solutions')", metadata={"tags": ["solution-only"]}),
            new_markdown_cell("Done."),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python", "version": "3.11.0"},
        },
    )


def write_nb(path: Path, nb: nbformat.NotebookNode) -> Path:
    """Write a notebook to disk and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_make_exercise_stubs_regions_at_marker_indentation() -> None:
    exercise = notebooks.make_exercise(solution_notebook())
    sources = [c.source for c in exercise.cells]
    assert sources[2] == (
        "# EXERCISE 0.3\ndef f(x):\n"
        '    raise NotImplementedError("Exercise 0.3: replace this line with your code")\n'
        "\nprint(f(1))"
    )
    assert sources[3] == f"{STUB}\nw = 3"
    assert sources[1] == "import math\nx = 1"


def test_make_exercise_drops_solution_cells_and_retitles() -> None:
    solution = solution_notebook()
    exercise = notebooks.make_exercise(solution)
    assert len(exercise.cells) == 5
    assert not any("<!-- SOLUTION -->" in c.source or "only in solutions" in c.source for c in exercise.cells)
    assert exercise.cells[0].source == "# 00 · Fine-tuning — Exercises\n\nIntro."
    assert solution.cells[0].source.startswith("# 00 · Fine-tuning — Solutions")
    assert "### BEGIN SOLUTION" in solution.cells[2].source


@pytest.mark.parametrize(
    "source",
    [
        "### BEGIN SOLUTION\nx = 1",
        "x = 1\n### END SOLUTION",
        "### BEGIN SOLUTION\n  ### BEGIN SOLUTION\n### END SOLUTION",
    ],
)
def test_unbalanced_markers_name_the_cell(source: str) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# T"), new_code_cell(source)])
    with pytest.raises(ValueError, match=r"^cell 1: "):
        notebooks.make_exercise(nb)


def test_generate_exercises_round_trip(tmp_path: Path) -> None:
    write_nb(tmp_path / "solutions" / "00_intro.ipynb", solution_notebook())
    write_nb(tmp_path / "solutions" / "01_more.ipynb", new_notebook(cells=[new_code_cell("x = 1")]))
    assert notebooks.generate_exercises(tmp_path) == ["00_intro.ipynb", "01_more.ipynb"]
    assert notebooks.generate_exercises(tmp_path) == []
    assert notebooks.generate_exercises(tmp_path, check=True) == []
    text = (tmp_path / "exercises" / "00_intro.ipynb").read_text()
    assert text.endswith("}\n") and '\n "cells": [\n' in text and "Exercise 0.3" in text
    (tmp_path / "exercises" / "00_intro.ipynb").write_text(text.replace("Exercise 0.3", "Exercise 9.9"))
    (tmp_path / "exercises" / "01_more.ipynb").unlink()
    write_nb(tmp_path / "exercises" / "99_orphan.ipynb", new_notebook())
    before = sorted(p.name for p in (tmp_path / "exercises").iterdir())
    assert notebooks.generate_exercises(tmp_path, check=True) == ["00_intro.ipynb", "01_more.ipynb", "99_orphan.ipynb"]
    assert sorted(p.name for p in (tmp_path / "exercises").iterdir()) == before


def test_missing_cell_ids_are_deterministic(tmp_path: Path) -> None:
    data = {
        "cells": [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": [], "execution_count": None}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "00_a.ipynb").write_text(json.dumps(data))
    notebooks.generate_exercises(tmp_path)
    assert notebooks.generate_exercises(tmp_path, check=True) == []
    assert notebooks.read_notebook(tmp_path / "solutions" / "00_a.ipynb").cells[0].id == "cell-0"


def dirty_notebook() -> nbformat.NotebookNode:
    """A notebook as saved after running it in Jupyter."""
    nb = solution_notebook()
    nb.metadata["widgets"] = {"state": {}}
    cell = nb.cells[1]
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.metadata.update({"collapsed": True, "tags": []})
    return nb


def test_clean_notebook_strips_outputs_and_metadata() -> None:
    dirty = dirty_notebook()
    clean = notebooks.clean_notebook(dirty)
    assert dict(clean.metadata) == {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None
    assert clean.cells[1].metadata == {
        "nbgrader": {
            "grade": False,
            "grade_id": f"locked-{dirty.cells[1].id}",
            "locked": True,
            "schema_version": 3,
            "solution": False,
            "task": False,
        }
    }  # read-only under nbgrader
    assert clean.cells[5].metadata == {"tags": ["solution-only"]}
    assert [c.id for c in clean.cells] == [c.id for c in dirty.cells]
    assert dirty.cells[1].execution_count == 3 and "widgets" in dirty.metadata


def test_notebook_problems_and_clean_all(tmp_path: Path) -> None:
    path = write_nb(tmp_path / "notebooks" / "00_intro.ipynb", dirty_notebook())
    problems = notebooks.notebook_problems(path)
    assert problems == [
        "notebook metadata has extra keys ['widgets']",
        "notebook metadata language_info has extra keys ['version']",
        "cell 1: has 1 output(s)",
        "cell 1: execution_count is 3",
        "cell 1: extra metadata keys ['collapsed']",
        "cell 1: empty tags list",
        "cells [0, 1, 2, 3, 6]: nbgrader metadata missing or out of date",
    ]
    assert notebooks.clean_all(tmp_path, check=True)[0] == "notebooks/00_intro.ipynb: " + problems[0]
    assert notebooks.clean_all(tmp_path) == ["notebooks/00_intro.ipynb"]
    assert notebooks.clean_all(tmp_path, check=True) == []
    assert notebooks.clean_all(tmp_path) == []


def graded_solution() -> nbformat.NotebookNode:
    """A solution notebook laid out like the course's: exercise cell, then its self-check cell."""
    return new_notebook(
        cells=[
            new_markdown_cell("# 09 · Toy: Solutions"),
            new_code_cell("from course_utils import checks"),
            new_markdown_cell("## Exercise 9.1: add one"),
            new_code_cell("# EXERCISE 9.1\ndef f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION"),
            new_code_cell("checks.check_f(f)\nprint(f(1))"),
            new_code_cell(
                "# EXERCISE 9.2\ndef answer_9_2():\n    ### BEGIN SOLUTION\n    return 'a'\n    ### END SOLUTION"
            ),
            new_code_cell('checks.check_question("9.2", answer_9_2)'),
            new_markdown_cell("<!-- SOLUTION -->\nWhy."),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def test_nbgrader_metadata_solution_test_and_read_only_cells() -> None:
    solution = notebooks.clean_notebook(graded_solution())
    roles = [
        (
            c.metadata["nbgrader"]["grade_id"],
            c.metadata["nbgrader"]["solution"],
            c.metadata["nbgrader"]["grade"],
            c.metadata["nbgrader"]["locked"],
            c.metadata["nbgrader"].get("points"),
        )
        for c in solution.cells
        if "nbgrader" in c.metadata
    ]
    ids = [c.id for c in solution.cells]
    assert roles == [
        (f"locked-{ids[0]}", False, False, True, None),
        (f"locked-{ids[1]}", False, False, True, None),
        (f"locked-{ids[2]}", False, False, True, None),
        ("exercise-9-1", True, False, False, None),
        ("check-9-1", False, True, True, 1),
        ("exercise-9-2", True, False, False, None),
        ("check-9-2", False, True, True, 1),
    ]
    assert "nbgrader" not in solution.cells[7].metadata  # solution-only: never released
    assert all(c.metadata["nbgrader"]["schema_version"] == 3 for c in solution.cells[:7])
    exercise = notebooks.make_exercise(solution)
    assert [c.metadata for c in exercise.cells] == [c.metadata for c in solution.cells[:7]]
    assert "NotImplementedError" in exercise.cells[3].source and "return x + 1" not in exercise.cells[3].source


def test_a_check_inside_a_solution_cell_is_refused(tmp_path: Path) -> None:
    nb = graded_solution()
    nb.cells[5].source += "\n\n\nchecks.check_question('9.2', answer_9_2)"
    with pytest.raises(ValueError, match=r"^cell 5: a self-check shares its cell with a solution; move the "):
        notebooks.clean_notebook(nb)
    path = write_nb(tmp_path / "solutions" / "09_toy.ipynb", nb)
    assert notebooks.notebook_problems(path)[-1].startswith("cell 5: a self-check shares its cell with a solution")


def test_clean_check_reports_stale_nbgrader_metadata(tmp_path: Path) -> None:
    path = write_nb(tmp_path / "solutions" / "09_toy.ipynb", notebooks.clean_notebook(graded_solution()))
    assert notebooks.notebook_problems(path) == []
    nb = notebooks.read_notebook(path)
    nb.cells[4].metadata["nbgrader"]["points"] = 5
    del nb.cells[3].metadata["nbgrader"]
    path.write_text(notebooks.render(nb))
    assert notebooks.notebook_problems(path) == ["cells [3, 4]: nbgrader metadata missing or out of date"]


def test_cli_exercises_and_clean_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_nb(tmp_path / "solutions" / "00_intro.ipynb", solution_notebook())
    assert main(["--root", str(tmp_path), "exercises", "--check"]) == 1
    assert "exercises/00_intro.ipynb" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "exercises"]) == 0
    assert main(["--root", str(tmp_path), "exercises", "--check"]) == 0
    assert main(["--root", str(tmp_path), "clean", "--check"]) == 1
    assert main(["--root", str(tmp_path), "clean"]) == 0
    assert main(["--root", str(tmp_path), "clean", "--check"]) == 0


def test_run_notebook_env_figures_and_memory(tmp_path: Path) -> None:
    path = write_nb(
        tmp_path / "nb" / "00_tiny.ipynb",
        new_notebook(
            cells=[
                new_code_cell("import os\nprint('hello', os.environ['COURSE_TEST_FLAG'])"),
                new_code_cell(
                    "from course_utils import report\n"
                    "report.record('00_tiny', {'flag': os.environ['COURSE_TEST_FLAG'], 'acc': 0.5,"
                    " 'cwd': os.getcwd()})"
                ),
            ]
        ),
    )
    before = path.read_text()
    results = tmp_path / "results"
    executed = results / "executed" / "00_tiny.ipynb"
    result = notebooks.run_notebook(
        path, env={"COURSE_TEST_FLAG": "on", "COURSE_RESULTS": str(results)}, timeout=120, executed_path=executed
    )
    assert result.ok and result.error == ""
    assert result.name == "00_tiny"
    assert result.figures == {"flag": "on", "acc": 0.5, "cwd": str(path.parent)}
    assert result.peak_rss_mb > 0 and result.wall_s > 0
    assert path.read_text() == before
    assert "hello on" in executed.read_text()


@pytest.mark.parametrize("ipc", [True, False], ids=["ipc", "tcp-without-ipc"])
def test_run_notebook_prints_no_kernel_warnings(
    ipc: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    if not ipc:  # where zmq has no IPC (Windows), the kernel still must not warn about plain-text TCP
        has = notebooks.zmq.has
        monkeypatch.setattr(notebooks.zmq, "has", lambda feature: feature != "ipc" and has(feature))
    path = write_nb(tmp_path / "00_quiet.ipynb", new_notebook(cells=[new_code_cell("print('ran')")]))
    capfd.readouterr()
    result = notebooks.run_notebook(path, env={"COURSE_RESULTS": str(tmp_path / "results")}, timeout=120)
    out, err = capfd.readouterr()
    assert result.ok, result.error
    assert "without encryption" not in err and "WARNING" not in err, err
    assert err.strip() == "" and out.strip() == ""


RACE = """ERROR:tornado.general:Uncaught exception in ZMQStream callback
Traceback (most recent call last):
  File "/venv/ipykernel/kernelbase.py", line 409, in process_control
    self._publish_status_and_flush("idle", "control", self.control_stream)
  File "zmq/backend/cython/_zmq.py", line 190, in zmq.backend.cython._zmq._check_rc
zmq.error.ZMQError: Socket operation on non-socket
"""


def test_kernel_stderr_drops_only_the_shutdown_race() -> None:
    assert notebooks.without_shutdown_race(RACE) == ""
    assert notebooks.without_shutdown_race("before\n" + RACE + "after\n") == "before\nafter\n"
    other = RACE.replace("Socket operation on non-socket", "Address already in use")
    assert notebooks.without_shutdown_race(other) == other  # any other traceback reaches the learner
    cut = RACE.rsplit("zmq.error", 1)[0]  # a head without its tail is kept too
    assert notebooks.without_shutdown_race(cut + "Killed\n") == cut + "Killed\n"


def test_run_notebook_passes_on_what_the_kernel_writes_to_its_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    cell = new_code_cell("import os\nos.write(2, b'from the kernel process\\n')")
    path = write_nb(tmp_path / "00_loud.ipynb", new_notebook(cells=[cell]))
    capfd.readouterr()
    result = notebooks.run_notebook(path, env={"COURSE_RESULTS": str(tmp_path / "results")}, timeout=120)
    assert result.ok, result.error
    assert "from the kernel process" in capfd.readouterr().err


def test_run_notebook_failure_is_one_line_naming_the_cell(tmp_path: Path) -> None:
    path = write_nb(
        tmp_path / "01_broken.ipynb",
        new_notebook(
            cells=[
                new_markdown_cell("# Broken"),
                new_code_cell("x = 1"),
                new_code_cell("raise ValueError('boom\\nsecond')"),
                new_code_cell("print('never')"),
            ]
        ),
    )
    stale = tmp_path / "results" / "figures" / "01_broken.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"old": 1}\n')
    result = notebooks.run_notebook(path, env={"COURSE_RESULTS": str(tmp_path / "results")}, timeout=120)
    assert not result.ok
    assert result.error == "cell 2: ValueError: boom second"
    assert result.figures == {} and not stale.exists()
