"""The course's own notebooks: clean, exercises in sync with solutions, stubs fail their checks, own data runs."""

from __future__ import annotations

import nbformat
import numpy as np
from nbclient import NotebookClient

from course_harness import notebooks
from course_utils import config, data

ROOT = config.repo_root()


def test_notebooks_are_clean():
    assert notebooks.clean_all(ROOT, check=True) == [], "run `python -m course_harness clean`"


def test_exercises_are_generated_from_solutions():
    assert notebooks.generate_exercises(ROOT, check=True) == [], "run `bash course exercises`"
    chapters = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {p.name for p in (ROOT / "solutions").glob("*.ipynb")} <= chapters


def test_exercise_headings_match_solutions():
    for solution in (ROOT / "solutions").glob("*.ipynb"):
        heads = [
            c.source.splitlines()[0]
            for c in notebooks.read_notebook(solution).cells
            if c.cell_type == "markdown" and c.source.startswith("## Exercise")
        ]
        ex = notebooks.read_notebook(ROOT / "exercises" / solution.name)
        assert heads and heads == [
            c.source.splitlines()[0]
            for c in ex.cells
            if c.cell_type == "markdown" and c.source.startswith("## Exercise")
        ]


def test_every_notebook_has_a_colab_badge_and_setup():
    for path in notebooks.notebook_files(ROOT):
        nb = notebooks.read_notebook(path)
        assert config.REPO_URL.split("github.com/")[1] in nb.cells[0].source, path
        assert "google.colab" in nb.cells[1].source, path


def test_stubs_fail_every_self_check(tmp_path):
    """Run the generated exercise notebook: each check cell must fail while the stubs are unfilled."""
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb,
            timeout=900,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
        checked = [c for c in nb.cells if c.cell_type == "code" and "checks.check_" in c.source]
        assert checked
        for cell in checked:
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert errors and errors[0].ename in {"AssertionError", "NameError"}, cell.source[:80]
        assert any("not done yet" in o.get("evalue", "") for c in checked for o in c.outputs)


def test_chapter_00_runs_on_your_own_csv(tmp_path, monkeypatch):
    """The README's bring-your-own-data recipe: COURSE_DATA=file.csv runs notebook 00 end to end."""
    amazon = data.subsample(data.load_domain("amazon"), 90, seed=5)
    csv_path = tmp_path / "reviews.csv"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "assets").symlink_to(config.cache_dir() / "assets")  # no second download
    amazon.assign(label=np.where(amazon["label"] == 1, "good", "bad"))[["text", "label"]].to_csv(csv_path, index=False)
    result = notebooks.run_notebook(
        ROOT / "notebooks" / "00_finetuning.ipynb",
        env={
            "COURSE_DATA": str(csv_path),
            "COURSE_FAST": "1",
            "COURSE_CACHE": str(tmp_path / "cache"),
            "COURSE_RESULTS": str(tmp_path / "results"),
        },
    )
    assert result.ok, result.error
    assert result.figures["data"] == str(csv_path) and result.figures["train_sentences"] == 72
