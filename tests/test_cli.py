"""The command line end to end through main(): run, bench, prepare, datacard and argument errors.

Only tiny notebooks are executed (one passing, one failing, two kernel starts each); results go to a tmp
COURSE_RESULTS, never into the repository's results/.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_harness import datacard
from course_harness.__main__ import main
from course_utils import assets, report

RUN_HEADER = "| notebook | status | wall_s | peak_rss_mb | figures |"
BENCH_HEADER = "| notebook | mode | status | wall_s | peak_rss_mb | date | machine | figures |"
FAILURE = "cell 2: ValueError: boom on purpose"


def notebook_root(root: Path, name: str, cells: list) -> Path:
    """A course-like folder holding only notebooks/<name>.ipynb."""
    (root / "notebooks").mkdir(parents=True)
    nbformat.write(new_notebook(cells=cells), str(root / "notebooks" / f"{name}.ipynb"))
    return root


@pytest.fixture(scope="module")
def passing_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """notebooks/00_pass.ipynb records figures, including the mode switches it was run with."""
    return notebook_root(
        tmp_path_factory.mktemp("passing"),
        "00_pass",
        [
            new_markdown_cell("# Passing"),
            new_code_cell(
                "import os\nfrom course_utils import report\n"
                "report.record('00_pass', {'acc': 0.8312, 'n': 3, 'fast': os.environ['COURSE_FAST'],"
                " 'retrain': os.environ.get('COURSE_RETRAIN', '0')})"
            ),
        ],
    )


@pytest.fixture(scope="module")
def failing_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """notebooks/00_fail.ipynb raises in its third cell."""
    return notebook_root(
        tmp_path_factory.mktemp("failing"),
        "00_fail",
        [
            new_markdown_cell("# Failing"),
            new_code_cell("x = 1"),
            new_code_cell("raise ValueError('boom on purpose')"),
            new_code_cell("print('never' + ' reached')"),
        ],
    )


@pytest.fixture()
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private COURSE_RESULTS for one test."""
    folder = tmp_path / "results"
    monkeypatch.setenv("COURSE_RESULTS", str(folder))
    monkeypatch.setenv("COURSE_FAST", "1")
    return folder


def one_error_line(err: str) -> str:
    """The single 'error: ...' line on stderr (fails when there is more or less)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------- run


def test_run_passing_notebook_prints_its_figures(
    passing_root: Path, results: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", "--root", str(passing_root), "--only", "00"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == RUN_HEADER and len(lines) == 3
    assert lines[2].startswith("| 00_pass | ok | ")
    assert lines[2].endswith(" | acc=0.831, n=3, fast=1, retrain=0 |")
    assert "running 00_pass.ipynb (fast) ..." in err and "00_pass.ipynb (fast): ok in " in err
    assert json.loads((results / "figures" / "00_pass.json").read_text())["n"] == 3
    assert (results / "executed" / "00_pass.ipynb").exists()
    assert not (passing_root / "results").exists()
    assert not (report.repo_root() / "results" / "figures" / "00_pass.json").exists()


def test_run_takes_fast_mode_from_any_spelling_config_accepts(
    passing_root: Path, results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("COURSE_FAST", "true")  # `COURSE_FAST=true bash course run` once ran full mode
    assert main(["run", "--root", str(passing_root), "--only", "00"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[2].endswith(" | acc=0.831, n=3, fast=1, retrain=0 |")
    assert "running 00_pass.ipynb (fast) ..." in err


def test_run_failing_notebook_exits_1_with_the_error(
    failing_root: Path, results: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--root", str(failing_root), "run", "--only", "00"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == RUN_HEADER and len(lines) == 3
    assert lines[2].startswith(f"| 00_fail | FAILED: {FAILURE} | ") and lines[2].endswith(" |  |")
    assert f"00_fail.ipynb (fast): FAILED: {FAILURE} in " in err
    assert "never reached" not in (results / "executed" / "00_fail.ipynb").read_text()


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["run", "--root", "{root}", "--only", "7"], ["no notebook numbered 07 in ", "available: 00"]),
        (["--root", "{root}", "run", "--only", "7"], ["no notebook numbered 07 in ", "available: 00"]),
        (["run", "--root", "{root}", "--only", "abc"], ["got 'abc'", "pass the number at the start of the notebook"]),
        (["bench", "--root", "{root}", "--only", "7", "--modes", "fast"], ["no notebook numbered 07", "available: 00"]),
        (["run", "--root", "{empty}"], ["no NN_*.ipynb notebooks in ", "pass --root"]),
    ],
)
def test_bad_notebook_choice_exits_2_with_one_error_line(
    argv: list[str],
    fragments: list[str],
    passing_root: Path,
    results: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    argv = [a.format(root=passing_root, empty=tmp_path / "empty") for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert all(fragment in line for fragment in fragments), line
    assert out == "" and not results.exists()


# ---------------------------------------------------------------- bench


def test_bench_fast_writes_json_and_markdown(passing_root: Path, results: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--root", str(passing_root), "--only", "00", "--modes", "fast"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads((results / "benchmark.json").read_text())["rows"]
    assert [(r["notebook"], r["mode"], r["ok"], r["error"]) for r in rows] == [("00_pass", "fast", True, "")]
    assert rows[0]["figures"] == {"acc": 0.8312, "n": 3, "fast": "1", "retrain": "1"}
    markdown = (results / "benchmark.md").read_text()
    assert markdown.startswith("# Notebook benchmark\n") and BENCH_HEADER in markdown
    assert "| 00_pass | fast | ok | " in markdown and markdown.count("| 00_pass |") == 1
    assert out.splitlines()[0] == BENCH_HEADER and out.splitlines()[2].startswith("| 00_pass | fast | ok | ")
    assert f"wrote {results / 'benchmark.json'} and {results / 'benchmark.md'}" in err
    assert (results / "executed" / "00_pass.fast.ipynb").exists()
    assert not (passing_root / "results").exists()


def test_bench_failing_notebook_exits_1(failing_root: Path, results: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--root", str(failing_root), "--only", "00", "--modes", "fast"]) == 1
    out, _ = capsys.readouterr()
    rows = json.loads((results / "benchmark.json").read_text())["rows"]
    assert [(r["notebook"], r["mode"], r["ok"], r["error"]) for r in rows] == [("00_fail", "fast", False, FAILURE)]
    assert f"| 00_fail | fast | FAILED: {FAILURE} | " in out
    assert f"| 00_fail | fast | FAILED: {FAILURE} | " in (results / "benchmark.md").read_text()


# ---------------------------------------------------------------- prepare


@pytest.fixture()
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty COURSE_CACHE, so nothing counts as already extracted."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("broken", ["fetch", "extract"])
def test_prepare_failure_exits_1_with_one_error_line(
    broken: str, empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def fail(name: str) -> Path:
        raise assets.AssetError(f"could not download {name} (test); {assets.PREPARE_HINT}")

    monkeypatch.setattr(assets, broken, fail)
    assert main(["prepare"]) == 1
    out, err = capsys.readouterr()
    assert one_error_line(err) == f"error: could not download vader (test); {assets.PREPARE_HINT}"
    assert "cache:" not in out and " ok " not in out


def test_prepare_success_exits_0(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    asked = []

    def extracted(name: str) -> Path:
        asked.append(name)
        return empty_cache / "assets" / name

    monkeypatch.setattr(assets, "extract", extracted)
    assert main(["prepare"]) == 0
    assert asked == list(assets.ASSETS) and {"vader", "minilm", "requirejs", "d3", "jquery"} <= set(asked)
    lines = capsys.readouterr().out.splitlines()
    n = len(asked)
    assert lines[:n] == [f"{name:12s} ok  {empty_cache / 'assets' / name}" for name in asked]
    assert lines[n] == f"cache: {empty_cache} (set COURSE_CACHE to move it)" and len(lines) == n + 1
    assert main(["prepare", "minilm"]) == 0 and asked[n:] == ["minilm"]


def test_prepare_unknown_asset_lists_the_valid_names(empty_cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "nosuch"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "unknown asset 'nosuch'" in line and str(sorted(assets.ASSETS)) in line
    assert not (empty_cache / "downloads").exists()


# ---------------------------------------------------------------- datacard


def test_datacard_writes_the_rendered_card_under_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["datacard", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "wrote data/README.md\n"
    assert (tmp_path / "data" / "README.md").read_text() == datacard.render()


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--bogus"], "python -m course_harness: error: unrecognized arguments: --bogus"),
        (["bench", "--modes", "slow"], "argument --modes: invalid choice: 'slow'"),
        (["clean", "--check", "extra"], "python -m course_harness: error: unrecognized arguments: extra"),
        (["datacard", "--fast"], "python -m course_harness: error: unrecognized arguments: --fast"),
        (["exercises", "--only", "00"], "python -m course_harness: error: unrecognized arguments: --only 00"),
        (["prepare", "--bogus"], "python -m course_harness prepare: error: unrecognized arguments: --bogus"),
        (["--root"], "argument --root: expected one argument"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_unknown_arguments_exit_2(argv: list[str], message: str, results: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""
    assert not results.exists()


def test_speed_compares_the_course_loop_with_trainer_and_records_a_row(tmp_path, monkeypatch, capsys) -> None:
    """A tiny run of `speed` (64 sentences, 128 to evaluate): both trainers run, the ratio is theirs, the row lands
    in the benchmark."""
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path))
    assert main(["speed", "--train-size", "64", "--eval-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "course loop (modeling.train)" in out and "Trainer, same work" in out and "Trainer, bare" in out
    rows = json.loads((tmp_path / "benchmark.json").read_text())["rows"]
    (row,) = [r for r in rows if r["notebook"] == "00 loop vs Trainer"]
    figures = row["figures"]
    assert row["mode"] == "n=64, eval 128"
    assert figures["ratio_vs_bare"] == pytest.approx(figures["course_loop_s"] / figures["trainer_bare_s"], abs=0.01)
    assert figures["ratio_vs_same_work"] == pytest.approx(
        figures["course_loop_s"] / figures["trainer_same_work_s"], abs=0.01
    )
    assert 0.3 < figures["course_test_accuracy"] < 0.8 and 0.3 < figures["trainer_test_accuracy"] < 0.8
    assert main(["speed", "--epochs", "0"]) == 2 and "epochs must be >= 1" in capsys.readouterr().err
    assert main(["speed", "--eval-size", "0"]) == 2 and "eval_size must be >= 1" in capsys.readouterr().err


def test_recipe_search_trains_every_grid_point_and_reads_only_validation(monkeypatch, capsys) -> None:
    from types import SimpleNamespace

    from course_harness import recipe_search

    seen = []

    def fake_finetune(splits, cfg, progress=True):
        seen.append((cfg.lr, cfg.epochs, cfg.seed))
        history = [
            {"epoch": e + 1, "val_accuracy": 0.8 + cfg.lr * 100 + e / 100, "seconds": 1.0} for e in range(cfg.epochs)
        ]
        return SimpleNamespace(history=history)

    monkeypatch.setattr(recipe_search.modeling, "finetune", fake_finetune)
    monkeypatch.setattr(recipe_search, "course_splits", lambda: None)
    recipe_search.main(["--lr", "5e-5", "1e-4", "--epochs", "2", "3", "--seeds", "1"])
    assert sorted(seen) == [(5e-5, 2, 1), (5e-5, 3, 1), (1e-4, 2, 1), (1e-4, 3, 1)]
    out = capsys.readouterr().out
    assert "val after epoch 3" in out and "test" not in out.lower()
