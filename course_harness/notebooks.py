"""Notebook harness: exercises from solutions, output stripping, and headless timed execution."""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
import zmq
from nbclient import NotebookClient
from nbformat import NotebookNode
from traitlets.config import Config

from course_utils import report, store

from . import colab

BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION[ \t]*$")
END_RE = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
EXERCISE_RE = re.compile(r"^[ \t]*#[ \t]*EXERCISE[ \t]+(?P<label>\d+(?:\.\d+)*[a-z]?)\b", re.MULTILINE)
CHECK_RE = re.compile(r"\bchecks\.check_\w+\(")
SOLUTION_MARK = "<!-- SOLUTION -->"
SOLUTION_ONLY_TAG = "solution-only"
FOLDERS = ("notebooks", "solutions", "exercises")
NOTEBOOK_METADATA_KEYS = ("kernelspec", "language_info")
NBGRADER_KEYS = ("grade", "grade_id", "locked", "points", "schema_version", "solution", "task")
CHECK_POINTS = 1  # each self-check cell is worth one point under nbgrader
SAMPLE_INTERVAL_S = 0.2


# ---------------------------------------------------------------- reading and writing


def _fill_cell_ids(data: dict) -> None:
    """Give cells without an id a deterministic one (nbformat would invent random ids)."""
    if data.get("nbformat") != 4:
        return
    data["nbformat_minor"] = max(int(data.get("nbformat_minor", 0)), 5)
    used = {cell.get("id") for cell in data.get("cells", [])}
    for index, cell in enumerate(data.get("cells", [])):
        if not cell.get("id"):
            candidate = f"cell-{index}"
            while candidate in used:
                candidate += "x"
            cell["id"] = candidate
            used.add(candidate)


def read_notebook(path: Path) -> NotebookNode:
    """Read a notebook as nbformat v4, with deterministic ids for cells that lack one."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid notebook JSON ({err}); restore it from git") from None
    _fill_cell_ids(data)
    return nbformat.reads(json.dumps(data), as_version=4)


def render(nb: NotebookNode) -> str:
    """The canonical file text: nbformat v4, JSON indent 1, trailing newline."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    """Atomically write `text` unless the file already holds it; True when written."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    store.write_text(path, text)
    return True


# ---------------------------------------------------------------- exercises from solutions


def exercise_label(source: str) -> str | None:
    """The exercise number in a `# EXERCISE 0.3` line of a cell, if any."""
    match = EXERCISE_RE.search(source)
    return match["label"] if match else None


def stub_line(indent: str, label: str | None) -> str:
    """The line that replaces a solution region."""
    prefix = f"Exercise {label}" if label else "Exercise"
    return f'{indent}raise NotImplementedError("{prefix}: replace this line with your code")'


def strip_solution(source: str, index: int) -> str:
    """Replace each BEGIN/END SOLUTION region of a code cell by a stub at the BEGIN indentation."""
    out: list[str] = []
    inside = False
    label = exercise_label(source)
    for line in source.split("\n"):
        begin = BEGIN_RE.match(line)
        if begin:
            if inside:
                raise ValueError(
                    f"cell {index}: '### BEGIN SOLUTION' inside an open solution region; "
                    "add the missing '### END SOLUTION' before it"
                )
            inside = True
            out.append(stub_line(begin["indent"], label))
        elif END_RE.match(line):
            if not inside:
                raise ValueError(
                    f"cell {index}: '### END SOLUTION' without a '### BEGIN SOLUTION'; "
                    "add the BEGIN marker or remove this line"
                )
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"cell {index}: '### BEGIN SOLUTION' is never closed; add '### END SOLUTION'")
    return "\n".join(out)


def is_solution_only(cell: NotebookNode) -> bool:
    """True for cells that exist only in the solution notebook."""
    if SOLUTION_ONLY_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    return cell.cell_type == "markdown" and SOLUTION_MARK in cell.source


def retitle(nb: NotebookNode) -> None:
    """Replace the word 'Solutions' by 'Exercises' in the title line of the first markdown cell."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.split("\n")
            for i, line in enumerate(lines):
                if line.lstrip().startswith("#"):
                    lines[i] = re.sub(r"\bSolutions\b", "Exercises", line)
                    break
            cell.source = "\n".join(lines)
            return


# ---------------------------------------------------------------- nbgrader cell metadata


def has_solution_region(cell: NotebookNode) -> bool:
    """True for a code cell with a `### BEGIN SOLUTION` line."""
    return cell.cell_type == "code" and any(BEGIN_RE.match(line) for line in cell.source.split("\n"))


def _nbgrader(grade_id: str, solution: bool = False, grade: bool = False, locked: bool = False) -> dict:
    """One cell's nbgrader metadata (schema 3); grade cells carry their points."""
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    return {**meta, "points": CHECK_POINTS} if grade else meta


def _slug(label: str) -> str:
    """A grade_id-safe form of an exercise label: '0.3' -> '0-3'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", label)


def add_grading(nb: NotebookNode) -> NotebookNode:
    """Mark a solution notebook's cells for nbgrader: solution regions are answer cells, the `checks.check_...`
    cell after each is an autograded test, every other cell is read-only; solution-only cells get nothing."""
    label = None
    for index, cell in enumerate(nb.cells):
        metadata = cell.setdefault("metadata", nbformat.from_dict({}))
        metadata.pop("nbgrader", None)
        if is_solution_only(cell):
            continue
        if has_solution_region(cell):
            if CHECK_RE.search(cell.source):
                raise ValueError(
                    f"cell {index}: a self-check shares its cell with a solution; move the "
                    "`checks.check_...(...)` call into the next cell so that nbgrader can grade it"
                )
            label = _slug(exercise_label(cell.source) or cell.id)
            metadata["nbgrader"] = _nbgrader(f"exercise-{label}", solution=True)
        elif cell.cell_type == "code" and CHECK_RE.search(cell.source):
            metadata["nbgrader"] = _nbgrader(f"check-{label or _slug(cell.id)}", grade=True, locked=True)
            label = None
        else:
            metadata["nbgrader"] = _nbgrader(f"locked-{_slug(cell.id)}", locked=True)
    return nb


def make_exercise(nb: NotebookNode) -> NotebookNode:
    """A copy of a solution notebook with solution regions stubbed, solution-only cells dropped, and the
    solution's nbgrader metadata (`add_grading`), so nbgrader can autograde the exercise as submitted."""
    exercise = copy.deepcopy(nb)
    if any(has_solution_region(cell) for cell in exercise.cells):
        add_grading(exercise)
    cells = []
    for index, cell in enumerate(exercise.cells):
        if is_solution_only(cell):
            continue
        if cell.cell_type == "code":
            cell.source = strip_solution(cell.source, index)
        cells.append(cell)
    exercise.cells = cells
    retitle(exercise)
    return exercise


def exercise_text(solution: Path) -> str:
    """The exercise file text generated from one solution notebook."""
    try:
        exercise = make_exercise(read_notebook(solution))
    except ValueError as err:
        raise ValueError(f"{solution.name}: {err}") from None
    return render(clean_notebook(exercise))


def generate_exercises(root: Path, check: bool = False) -> list[str]:
    """Write exercises/ from solutions/; names written, or (check=True) names out of sync."""
    root = Path(root)
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    names = []
    for solution in solutions:
        target = root / "exercises" / solution.name
        text = exercise_text(solution)
        if check:
            current = target.read_text(encoding="utf-8") if target.exists() else None
            names += [solution.name] if current != text else []
        elif _write_if_changed(target, text):
            names.append(solution.name)
    if check:
        known = {s.name for s in solutions}
        names += [p.name for p in sorted((root / "exercises").glob("*.ipynb")) if p.name not in known]
    return names


# ---------------------------------------------------------------- cleaning


def _clean_cell_metadata(metadata: Mapping) -> NotebookNode:
    """Cell metadata reduced to a non-empty `tags` list and nbgrader's own keys (no checksums)."""
    tags = list(metadata.get("tags", []))
    kept: dict = {"tags": tags} if tags else {}
    if "nbgrader" in metadata:
        kept["nbgrader"] = {key: metadata["nbgrader"][key] for key in NBGRADER_KEYS if key in metadata["nbgrader"]}
    return nbformat.from_dict(kept)


def _clean_notebook_metadata(metadata: Mapping) -> NotebookNode:
    """Notebook metadata reduced to `kernelspec` and `language_info.name`."""
    kept: dict = {}
    if "kernelspec" in metadata:
        kept["kernelspec"] = copy.deepcopy(dict(metadata["kernelspec"]))
    if "name" in metadata.get("language_info", {}):
        kept["language_info"] = {"name": metadata["language_info"]["name"]}
    return nbformat.from_dict(kept)


def clean_notebook(nb: NotebookNode) -> NotebookNode:
    """A copy without outputs, execution counts or metadata beyond kernelspec, language, tags and nbgrader's;
    a notebook with solution regions (solutions/) gets its nbgrader metadata from them (`add_grading`)."""
    clean = copy.deepcopy(nb)
    clean.metadata = _clean_notebook_metadata(nb.metadata)
    for cell in clean.cells:
        cell.metadata = _clean_cell_metadata(cell.get("metadata", {}))
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    if any(has_solution_region(cell) for cell in clean.cells):
        add_grading(clean)
    return colab.apply(clean)  # the Colab install cell and badge follow config.REPO_URL / REPO_REF


def _metadata_problems(nb: NotebookNode) -> list[str]:
    """Notebook-level metadata that cleaning would remove."""
    problems = []
    extra = sorted(set(nb.metadata) - set(NOTEBOOK_METADATA_KEYS))
    if extra:
        problems.append(f"notebook metadata has extra keys {extra}")
    extra = sorted(set(nb.metadata.get("language_info", {})) - {"name"})
    if extra:
        problems.append(f"notebook metadata language_info has extra keys {extra}")
    return problems


def _cell_problems(index: int, cell: NotebookNode) -> list[str]:
    """What cleaning would change in one cell."""
    problems = []
    if cell.get("outputs"):
        problems.append(f"cell {index}: has {len(cell.outputs)} output(s)")
    if cell.get("execution_count") is not None:
        problems.append(f"cell {index}: execution_count is {cell.execution_count}")
    metadata = cell.get("metadata", {})
    extra = sorted(set(metadata) - {"tags", "nbgrader"})
    if extra:
        problems.append(f"cell {index}: extra metadata keys {extra}")
    if "tags" in metadata and not metadata["tags"]:
        problems.append(f"cell {index}: empty tags list")
    return problems


def notebook_problems(path: Path) -> list[str]:
    """Why a notebook file is not clean (outputs, execution counts, extra metadata, layout)."""
    try:
        nb = read_notebook(path)
    except ValueError as err:
        return [str(err)]
    problems = _metadata_problems(nb) + colab.problems(nb)
    for index, cell in enumerate(nb.cells):
        problems += _cell_problems(index, cell)
    if any(has_solution_region(cell) for cell in nb.cells):
        try:
            graded = clean_notebook(nb).cells
        except ValueError as err:  # a solution notebook nbgrader could not grade
            return [*problems, str(err)]
        stale = [
            index
            for index, cell in enumerate(nb.cells)
            if cell.metadata.get("nbgrader") != graded[index].metadata.get("nbgrader")
        ]
        problems += [f"cells {stale}: nbgrader metadata missing or out of date"] if stale else []
    if not problems and Path(path).read_text(encoding="utf-8") != render(clean_notebook(nb)):
        problems.append("file layout is not canonical (nbformat 4.5, JSON indent 1, ids on every cell)")
    return problems


def notebook_files(root: Path) -> list[Path]:
    """Every notebook in notebooks/, solutions/ and exercises/, in a stable order."""
    return [path for folder in FOLDERS for path in sorted((Path(root) / folder).glob("*.ipynb"))]


def clean_all(root: Path, check: bool = False) -> list[str]:
    """Clean every course notebook; files rewritten, or (check=True) 'file: problem' lines."""
    root = Path(root)
    found = []
    for path in notebook_files(root):
        name = path.relative_to(root).as_posix()
        if check:
            found += [f"{name}: {problem}" for problem in notebook_problems(path)]
        elif _write_if_changed(path, render(clean_notebook(read_notebook(path)))):
            found.append(name)
    return found


# ---------------------------------------------------------------- execution


@dataclass
class RunResult:
    """Outcome of one headless notebook run."""

    name: str
    ok: bool
    wall_s: float
    peak_rss_mb: float
    error: str = ""
    figures: dict = field(default_factory=dict)


def tree_rss(pid: int) -> int:
    """Summed resident memory in bytes of a process and all its descendants (0 if gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


class RssSampler:
    """Tracks the peak RSS of a process tree from a background thread."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        """Prepare a sampler; nothing runs until start()."""
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one measurement now."""
        if self.pid is not None:
            self.peak_bytes = max(self.peak_bytes, tree_rss(self.pid))

    def _loop(self) -> None:
        """Sample until stopped."""
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self, pid: int | None) -> None:
        """Begin sampling the tree rooted at `pid` (no-op when pid is None)."""
        self.pid = pid
        self.sample()
        if pid is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak_bytes / 2**20


def kernel_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The kernel's full environment: ours plus `extra`, the repo on PYTHONPATH, absolute COURSE_RESULTS."""
    extra = dict(extra or {})
    bad = {k: v for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"env must map str to str, got {bad!r}; pass values as strings like '1'")
    env = {**os.environ, **extra}
    paths = [str(report.repo_root()), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["COURSE_RESULTS"] = str(report.results_dir(env).resolve())
    return env


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace to single spaces and cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_error(err: Exception, cell_index: int | None) -> str:
    """One line: where the run failed, the exception name and its message."""
    where = f"cell {cell_index}" if cell_index is not None else "kernel"
    name = getattr(err, "ename", None) or type(err).__name__
    message = getattr(err, "evalue", None)
    message = str(err) if message is None else message
    return one_line(f"{where}: {name}: {message}" if message else f"{where}: {name}")


def kernel_config(socket_dir: Path) -> Config:
    """Kernel manager settings: IPC sockets in `socket_dir` where zmq has them (no open TCP port, and ipykernel's
    'running over TCP without encryption' warning never reaches the learner), else CurveZMQ-encrypted TCP."""
    if zmq.has("ipc"):  # an absolute path: the default 'kernel-ipc' is relative, and the kernel runs in another cwd
        return Config({"KernelManager": {"transport": "ipc", "ip": str(Path(socket_dir) / "kernel")}})
    return Config({"KernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}})


# ipykernel 7.4 can log this traceback as the kernel shuts down: the control channel publishes "idle" after the IO
# thread's event pipe has closed. The notebook has finished by then and nothing is lost; ipykernel PR #1518 fixed
# the same race in _really_send but not in schedule(). Only a traceback that ends in this error is dropped.
SHUTDOWN_RACE_HEAD = "ERROR:tornado.general:Uncaught exception in ZMQStream callback"
SHUTDOWN_RACE_TAIL = "zmq.error.ZMQError: Socket operation on non-socket"


def without_shutdown_race(text: str) -> str:
    """The kernel's stderr less ipykernel's known shutdown-race traceback (every other line is kept)."""
    lines, kept, i = text.splitlines(keepends=True), [], 0
    while i < len(lines):
        if lines[i].rstrip() == SHUTDOWN_RACE_HEAD:
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "Traceback")) or lines[j].strip() == ""):
                j += 1
            if j < len(lines) and lines[j].rstrip() == SHUTDOWN_RACE_TAIL:
                i = j + 1
                continue
        kept.append(lines[i])
        i += 1
    return "".join(kept)


def _execute(nb: NotebookNode, env: dict[str, str], cwd: Path, timeout: int, sampler: RssSampler) -> str:
    """Execute `nb` in place in a fresh python3 kernel; '' on success, else a one-line error."""
    state: dict = {"cell": None}

    def on_start(**_: object) -> None:
        """Start sampling once the kernel process exists."""
        sampler.start(getattr(getattr(client.km, "provisioner", None), "pid", None))

    def on_cell(cell_index: int, **_: object) -> None:
        """Remember which cell is running, for the error message."""
        state["cell"] = cell_index

    with tempfile.TemporaryDirectory(prefix="course-kernel-") as sockets, tempfile.TemporaryFile("w+") as stderr:
        client = NotebookClient(
            nb,
            kernel_name="python3",
            timeout=timeout,
            config=kernel_config(Path(sockets)),
            resources={"metadata": {"path": str(cwd)}},
            on_notebook_start=on_start,
            on_cell_execute=on_cell,
            on_cell_executed=lambda **_: sampler.sample(),
        )
        try:  # the kernel's own stderr (not the cells': those go to the notebook) is passed on once it stops
            client.execute(env=env, stderr=stderr)
        except Exception as err:  # a harness reports any failure of the notebook instead of crashing
            return describe_error(err, state["cell"])
        finally:
            stderr.seek(0)
            sys.stderr.write(without_shutdown_race(stderr.read()))
            sys.stderr.flush()
    return ""


def run_notebook(
    path: Path,
    env: dict[str, str] | None = None,
    timeout: int = 1800,
    cwd: Path | None = None,
    executed_path: Path | None = None,
) -> RunResult:
    """Execute a notebook headless (timeout is per cell), timing it and tracking the kernel's peak memory."""
    path = Path(path).resolve()
    nb = read_notebook(path)
    kernel_env = kernel_environment(env)
    results = report.results_dir(kernel_env)
    report.clear(path.stem, results)
    sampler = RssSampler()
    start = time.perf_counter()
    error = _execute(nb, kernel_env, Path(cwd or path.parent).resolve(), timeout, sampler)
    wall_s = time.perf_counter() - start
    peak_mb = sampler.stop()
    if executed_path is not None:
        store.write_text(Path(executed_path), render(nb))
    return RunResult(path.stem, not error, round(wall_s, 2), round(peak_mb, 1), error, report.load(path.stem, results))
