"""Key figures of each notebook: record them from a notebook, load and tabulate them afterwards."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

from . import config, store, tracking  # tracking imports report too: both use attributes at call time only

Scalar = float | int | str | bool | None
CHAPTER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def repo_root() -> Path:
    """The folder that holds the course_utils package: the checkout, or site-packages when installed."""
    return Path(__file__).resolve().parent.parent


def results_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where results go: $COURSE_RESULTS, else <checkout>/results, else <cache>/results (see config.results_dir)."""
    return config.results_dir(environ)


def figure_path(chapter: str, directory: Path | None = None) -> Path:
    """The JSON file that holds one chapter's figures."""
    if not isinstance(chapter, str) or not CHAPTER_RE.match(chapter):
        raise ValueError(
            f"chapter must be a file-name-safe name like '00_finetuning', got {chapter!r}; "
            "use letters, digits, '_', '-' and '.'"
        )
    return (directory or results_dir()) / "figures" / f"{chapter}.json"


def as_scalar(key: str, value: object) -> Scalar:
    """A JSON scalar for `value` (0-d numpy/torch values are unwrapped), or a ValueError."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(
            f"figure {key!r} must be a number, string, bool or None, got {type(value).__name__}; "
            "record one scalar per key"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"figure {key!r} must be finite, got {value}; record None or a string instead")
    return value


def record(chapter: str, figures: Mapping[str, object], directory: Path | None = None, track: bool = True) -> Path:
    """Write a chapter's figures to <results>/figures/<chapter>.json (replacing earlier ones); log a run if `track`."""
    path = figure_path(chapter, directory)
    if not isinstance(figures, Mapping):
        raise ValueError(
            f"figures must be a dict of name -> scalar, got {type(figures).__name__}; "
            "pass e.g. {'test_accuracy': 0.83}"
        )
    clean = {}
    for key, value in figures.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"figure names must be non-empty strings, got {key!r}; rename the key")
        clean[key] = as_scalar(key, value)
    store.write_text(path, json.dumps(clean, indent=1, allow_nan=False) + "\n")
    if track:
        tracking.log_run(chapter, clean, directory=directory)  # the run log of chapter 07: <results>/runs.jsonl
    return path


def load(chapter: str, directory: Path | None = None) -> dict:
    """A chapter's recorded figures, or an empty dict when none were recorded."""
    path = figure_path(chapter, directory)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and rerun the notebook") from None


def clear(chapter: str, directory: Path | None = None) -> None:
    """Delete a chapter's figures so that a stale value is never reported."""
    figure_path(chapter, directory).unlink(missing_ok=True)


def format_value(value: object) -> str:
    """Readable cell text: 3 decimals below 10, 1 decimal from 10 up, %g for tiny numbers."""
    if value is None:
        return ""
    if isinstance(value, float):
        size = abs(value)
        if not math.isfinite(value) or (0 < size < 0.001):
            return f"{value:.3g}"
        return f"{value:.3f}" if size < 10 else f"{value:.1f}"
    return str(value)


def _cell(value: object) -> str:
    """One markdown table cell: formatted, on one line, with pipes escaped."""
    return " ".join(format_value(value).split()).replace("|", "\\|")


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of `rows` (missing keys show as empty cells)."""
    if not columns:
        raise ValueError("format_table needs at least one column, got []; pass the keys to show")
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)
