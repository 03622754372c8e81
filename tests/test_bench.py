"""Tests for the notebook runner's bookkeeping (no notebook is executed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_harness import bench
from course_harness.notebooks import RunResult


def make_notebooks(root: Path, names: list[str]) -> None:
    """Empty files are enough for discovery."""
    (root / "notebooks").mkdir(parents=True)
    for name in names:
        (root / "notebooks" / name).write_text("{}")


def test_find_notebooks_orders_and_filters(tmp_path: Path) -> None:
    make_notebooks(tmp_path, ["01_b.ipynb", "00_a.ipynb", "10_c.ipynb", "notes.ipynb"])
    assert [p.name for p in bench.find_notebooks(tmp_path)] == ["00_a.ipynb", "01_b.ipynb", "10_c.ipynb"]
    assert [p.name for p in bench.find_notebooks(tmp_path, ["10", "0"])] == ["00_a.ipynb", "10_c.ipynb"]
    with pytest.raises(ValueError, match="no notebook numbered 07"):
        bench.find_notebooks(tmp_path, ["07"])
    with pytest.raises(ValueError, match="two-digit"):
        bench.find_notebooks(tmp_path, ["abc"])
    with pytest.raises(ValueError, match="no NN_"):
        bench.find_notebooks(tmp_path / "elsewhere")


def test_fast_mode_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURSE_FAST", raising=False)
    assert not bench.fast_requested(False) and bench.fast_requested(True)
    monkeypatch.setenv("COURSE_FAST", "1")
    assert bench.fast_requested(False)
    assert bench.mode_env("full", retrain=True) == {"COURSE_FAST": "0", "COURSE_RETRAIN": "1"}
    assert bench.mode_env("fast") == {"COURSE_FAST": "1"}


def test_results_table() -> None:
    results = [
        RunResult("00_a", True, 12.34, 456.7, "", {"acc": 0.8312, "n": 3}),
        RunResult("01_b", False, 1.0, 80.0, "cell 2: ValueError: boom", {}),
    ]
    assert bench.results_table(results).splitlines()[2:] == [
        "| 00_a | ok | 12.3 | 456.7 | acc=0.831, n=3 |",
        "| 01_b | FAILED: cell 2: ValueError: boom | 1.000 | 80.0 |  |",
    ]


def test_write_benchmark(tmp_path: Path) -> None:
    rows = [
        {
            "notebook": "00_a",
            "mode": "fast",
            "ok": True,
            "wall_s": 3.5,
            "peak_rss_mb": 400.0,
            "error": "",
            "figures": {"acc": 0.8},
        }
    ]
    json_path, md_path = bench.write_benchmark(rows, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["rows"] == rows and {"date", "python", "torch", "cpu_count", "platform"} <= set(data["header"])
    assert "| 00_a | fast | ok | 3.500 | 400.0 |  |  | acc=0.800 |" in md_path.read_text()  # no date, no machine


def test_partial_benchmark_keeps_other_notebooks(tmp_path: Path) -> None:
    def row(name: str, mode: str, wall: float) -> dict:
        return {
            "notebook": name,
            "mode": mode,
            "ok": True,
            "wall_s": wall,
            "peak_rss_mb": 1.0,
            "error": "",
            "figures": {},
        }

    bench.write_benchmark([row("00_a", "fast", 1), row("00_a", "full", 2), row("01_b", "fast", 3)], tmp_path)
    json_path, _ = bench.write_benchmark([row("01_b", "full", 4), row("01_b", "fast", 5)], tmp_path)
    rows = json.loads(json_path.read_text())["rows"]
    assert [(r["notebook"], r["mode"], r["wall_s"]) for r in rows] == [
        ("00_a", "fast", 1),
        ("00_a", "full", 2),
        ("01_b", "fast", 5),
        ("01_b", "full", 4),
    ]


def test_each_benchmark_row_names_the_machine_it_was_measured_on(tmp_path: Path, monkeypatch) -> None:
    from course_utils import config

    monkeypatch.setattr(config, "cpu_info", lambda: {"cpu": "Test CPU 9000", "cores": "2", "flags": "avx2"})
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.setenv("COURSE_PRECISION", "fp32")
    label = bench.machine_label()
    assert label == "cpu x2 fp32: Test CPU 9000 (avx2)"
    row = {
        "notebook": "00_x",
        "mode": "fast",
        "ok": True,
        "wall_s": 1.0,
        "peak_rss_mb": 1.0,
        "error": "",
        "figures": {},
        "date": "2026-11-29",
        "machine": label,
    }
    _, md_path = bench.write_benchmark([row], tmp_path, header={"date": "now"})
    assert "Test CPU 9000 (avx2)" in md_path.read_text()
