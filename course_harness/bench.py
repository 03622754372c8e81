"""Run the course notebooks headless, time them, and tabulate their key figures."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from course_utils import config, report, store

from .notebooks import RunResult, run_notebook

NOTEBOOK_RE = re.compile(r"^(?P<prefix>\d{2})_.+\.ipynb$")
MODES = ("fast", "full")
RUN_COLUMNS = ["notebook", "status", "wall_s", "peak_rss_mb", "figures"]
BENCH_COLUMNS = ["notebook", "mode", "status", "wall_s", "peak_rss_mb", "date", "machine", "figures"]
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """A log that says nothing."""


def normalise_prefixes(only: Sequence[str]) -> list[str]:
    """Two-digit notebook prefixes from user input like '0', '03' or '12'."""
    prefixes = []
    for item in only:
        if not str(item).isdigit() or len(str(item)) > 2:
            raise ValueError(
                f"--only takes two-digit notebook numbers like 00 or 03, got {item!r}; "
                "pass the number at the start of the notebook's file name"
            )
        prefixes.append(str(item).zfill(2))
    return prefixes


def find_notebooks(root: Path, only: Sequence[str] | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in order, optionally only those with the given NN prefixes."""
    found = {}
    for path in sorted((Path(root) / "notebooks").glob("*.ipynb")):
        match = NOTEBOOK_RE.match(path.name)
        if match:
            found.setdefault(match["prefix"], []).append(path)
    if not found:
        raise ValueError(
            f"no NN_*.ipynb notebooks in {Path(root) / 'notebooks'}; run from the course checkout or pass --root"
        )
    wanted = normalise_prefixes(only) if only else sorted(found)
    missing = [p for p in wanted if p not in found]
    if missing:
        raise ValueError(
            f"no notebook numbered {', '.join(missing)} in {Path(root) / 'notebooks'}; "
            f"available: {', '.join(sorted(found)) or 'none'}"
        )
    return [path for prefix in sorted(set(wanted)) for path in found[prefix]]


def fast_requested(flag: bool) -> bool:
    """Fast mode when --fast is given or COURSE_FAST is on (1, true, yes, on; config reads it)."""
    return flag or config.is_fast()


def mode_env(mode: str, retrain: bool = False) -> dict[str, str]:
    """Environment variables for a fast or full run (COURSE_RETRAIN=1 rebuilds cached checkpoints)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}; use fast or full")
    env = {"COURSE_FAST": "1" if mode == "fast" else "0"}
    if retrain:
        env["COURSE_RETRAIN"] = "1"
    return env


def results_for(root: Path) -> Path:
    """Where a run on `root` writes: $COURSE_RESULTS, else <root>/results for a checkout, else config.results_dir()."""
    override = config.results_override()
    if override is not None:
        return override
    return Path(root) / "results" if config.is_checkout(root) else config.results_dir()


def run_one(path: Path, results: Path, mode: str, retrain: bool = False, tag: str = "", log: Log = _quiet) -> RunResult:
    """Run one notebook in a mode, keeping its executed copy under <results>/executed/."""
    env = {**mode_env(mode, retrain), "COURSE_RESULTS": str(results)}
    log(f"running {path.name} ({mode}) ...")
    result = run_notebook(path, env=env, executed_path=results / "executed" / f"{path.stem}{tag}.ipynb")
    log(
        f"{path.name} ({mode}): {status(result.ok, result.error)} in {result.wall_s:.1f} s, "
        f"peak {result.peak_rss_mb:.0f} MB"
    )
    return result


def run_notebooks(
    root: Path, only: Sequence[str] | None = None, fast: bool = False, log: Log = _quiet
) -> list[RunResult]:
    """Execute the chosen notebooks in order, in fast or full mode."""
    mode = "fast" if fast_requested(fast) else "full"
    results = results_for(root)
    return [run_one(path, results, mode, log=log) for path in find_notebooks(root, only)]


def status(ok: bool, error: str) -> str:
    """'ok', or 'FAILED: <one-line error>'."""
    return "ok" if ok else f"FAILED: {error}"


def figures_text(figures: dict) -> str:
    """Key figures as 'k=v' pairs, numbers formatted like the table."""
    return ", ".join(f"{key}={report.format_value(value)}" for key, value in figures.items())


def results_table(results: list[RunResult]) -> str:
    """Markdown table of `run` results."""
    rows = [
        {
            "notebook": r.name,
            "status": status(r.ok, r.error),
            "wall_s": r.wall_s,
            "peak_rss_mb": r.peak_rss_mb,
            "figures": figures_text(r.figures),
        }
        for r in results
    ]
    return report.format_table(rows, RUN_COLUMNS)


def run_benchmark(
    root: Path, only: Sequence[str] | None = None, modes: Sequence[str] = MODES, log: Log = _quiet
) -> list[dict]:
    """Run each notebook in each mode with COURSE_RETRAIN=1; one row per run."""
    for mode in modes:
        mode_env(mode)
    rows = []
    results = results_for(root)
    for path in find_notebooks(root, only):
        for mode in modes:
            r = run_one(path, results, mode, retrain=True, tag=f".{mode}", log=log)
            rows.append(
                {
                    "notebook": r.name,
                    "mode": mode,
                    "ok": r.ok,
                    "wall_s": r.wall_s,
                    "peak_rss_mb": r.peak_rss_mb,
                    "error": r.error,
                    "figures": r.figures,
                    "date": datetime.now(UTC).date().isoformat(),
                    "machine": machine_label(),
                }
            )
    return rows


def machine_label() -> str:
    """Where a row was measured: device and arithmetic, and for a CPU its model and bf16-relevant flags (a CPU
    with avx512_bf16 or AMX trains about twice as fast in bf16; one without runs fp32)."""
    where = config.device()
    if where.type == "cpu":
        cpu = config.cpu_info()
        return f"cpu x{cpu['cores']} {config.precision(where)}: {cpu['cpu']} ({cpu['flags']})"
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else where.type
    return f"{where.type} {config.precision(where)}: {name}"


def benchmark_header() -> dict:
    """When and where the benchmark ran."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch_version,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def benchmark_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows."""
    shown = [
        {**row, "status": status(row["ok"], row["error"]), "figures": figures_text(row["figures"])} for row in rows
    ]
    return report.format_table(shown, BENCH_COLUMNS)


def benchmark_markdown(header: dict, rows: list[dict]) -> str:
    """benchmark.md: the machine description, then the table."""
    machine = ", ".join(f"{key} {value}" for key, value in header.items())
    return f"# Notebook benchmark\n\n{machine}\n\n{benchmark_table(rows)}\n"


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of a partial run (`--only`) replace the same notebook and mode; other notebooks' rows are kept."""
    fresh = {(row["notebook"], row["mode"]) for row in new}
    kept = [row for row in old if (row["notebook"], row["mode"]) not in fresh]
    order = {mode: i for i, mode in enumerate(MODES)}
    return sorted(kept + new, key=lambda row: (row["notebook"], order.get(row["mode"], len(order))))


def write_benchmark(rows: list[dict], directory: Path | None = None, header: dict | None = None) -> tuple[Path, Path]:
    """Atomically write benchmark.json and benchmark.md (merged with earlier rows); their paths."""
    directory = directory or report.results_dir()
    header = header or benchmark_header()
    json_path, md_path = directory / "benchmark.json", directory / "benchmark.md"
    if json_path.exists():
        rows = merge_rows(json.loads(json_path.read_text()).get("rows", []), rows)
    store.write_text(json_path, json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    store.write_text(md_path, benchmark_markdown(header, rows))
    return json_path, md_path
