"""Tests for recording, loading and tabulating notebook figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_utils import report


def test_results_dir_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURSE_RESULTS", raising=False)
    assert report.results_dir() == Path(report.__file__).resolve().parent.parent / "results"
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path))
    assert report.results_dir() == tmp_path


def test_record_overwrites_and_load_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path))
    assert report.load("00_finetuning") == {}
    path = report.record("00_finetuning", {"test_accuracy": 0.83, "epochs": 2, "model": "minilm", "ok": True})
    assert path == tmp_path / "figures" / "00_finetuning.json"
    assert report.load("00_finetuning") == {"test_accuracy": 0.83, "epochs": 2, "model": "minilm", "ok": True}
    report.record("00_finetuning", {"f1": 0.5})
    assert report.load("00_finetuning") == {"f1": 0.5}
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["00_finetuning.json"]


def test_record_unwraps_numpy_scalars(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    report.record("01_x", {"a": np.float32(0.25), "n": np.int64(3)}, tmp_path)
    assert report.load("01_x", tmp_path) == {"a": 0.25, "n": 3}


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, (1,), float("nan"), object()])
def test_record_rejects_non_scalars(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match="figure 'x' must be"):
        report.record("00_x", {"x": value}, tmp_path)
    assert not (tmp_path / "figures" / "00_x.json").exists()


def test_record_rejects_bad_chapter_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chapter must be"):
        report.record("../escape", {"x": 1}, tmp_path)


@pytest.mark.parametrize(
    "value, text",
    [
        (0.8312, "0.831"),
        (0.831, "0.831"),
        (5.0, "5.000"),
        (123.456, "123.5"),
        (12345.67, "12345.7"),
        (0.0, "0.000"),
        (0.00012, "0.00012"),
        (-2.5, "-2.500"),
        (7, "7"),
        ("ok", "ok"),
        (True, "True"),
        (None, ""),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert report.format_value(value) == text


def test_format_table() -> None:
    rows = [{"notebook": "00_finetuning", "wall_s": 123.456, "acc": 0.8312}, {"notebook": "01_a|b", "acc": 1}]
    assert report.format_table(rows, ["notebook", "wall_s", "acc"]) == (
        "| notebook | wall_s | acc |\n| --- | --- | --- |\n| 00_finetuning | 123.5 | 0.831 |\n| 01_a\\|b |  | 1 |"
    )
