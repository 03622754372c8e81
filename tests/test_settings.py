"""Settings: course_utils/config.py is the only reader of COURSE_* variables, and a bad value gets one line."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from course_harness import bench
from course_harness.__main__ import main
from course_utils import config, report

ROOT = Path(__file__).resolve().parent.parent
READ_METHODS = {"get", "pop", "setdefault", "getenv"}


def _course_name(node: ast.AST | None) -> str | None:
    """The COURSE_* name a node spells as a string literal, if it does."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("COURSE_"):
        return node.value
    return None


def course_reads(source: str) -> list[tuple[int, str]]:
    """(line, code) of every read of a COURSE_* key: x.get/pop/setdefault/getenv("COURSE_..."), x["COURSE_..."]
    used as a value, and "COURSE_..." in x. Writes (`env["COURSE_X"] = ...`, dict literals) are not reads."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            hit = name in READ_METHODS and node.args and _course_name(node.args[0])
        elif isinstance(node, ast.Subscript):
            hit = isinstance(node.ctx, ast.Load) and _course_name(node.slice)
        elif isinstance(node, ast.Compare):
            hit = _course_name(node.left) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
        else:
            hit = False
        if hit:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scanner_sees_each_way_of_reading_a_setting() -> None:
    reads = """
import os
a = os.environ.get("COURSE_FAST")
b = os.getenv("COURSE_MODE", "offline")
c = os.environ["COURSE_CACHE"]
d = "COURSE_DATA" in os.environ
e = env.get("COURSE_RESULTS")
f = kernel_env["COURSE_RESULTS"]
"""
    assert [line for line, _ in course_reads(reads)] == [3, 4, 5, 6, 7, 8]
    writes = """
env["COURSE_RESULTS"] = "x"
env = {"COURSE_FAST": "1", "COURSE_RETRAIN": "1"}
os.environ.get("HF_HUB_OFFLINE")
"""
    assert course_reads(writes) == []


def test_only_config_reads_course_settings() -> None:
    offenders = []
    for package in ("course_utils", "course_harness"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "course_utils" / "config.py":
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{line}: {code}"
                for line, code in course_reads(path.read_text(encoding="utf-8"))
            ]
    assert not offenders, "read COURSE_* settings through course_utils.config instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", " True "])
def test_harness_and_config_agree_on_fast_mode(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_FAST", value)
    assert config.is_fast() and bench.fast_requested(False)


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_harness_and_config_agree_on_full_mode(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_FAST", value)
    assert not config.is_fast() and not bench.fast_requested(False) and bench.fast_requested(True)


BAD_VALUES = [
    ("COURSE_FAST", "maybe", "1, 0, true, false, yes, no, on, off"),
    ("COURSE_RETRAIN", "2", "1, 0, true, false, yes, no, on, off"),
    ("COURSE_MODE", "cloud", "offline, online"),
    ("COURSE_DEVICE", "tpu", "auto, cpu, cuda, mps"),
    ("COURSE_PRECISION", "fp8", "auto, fp32, bf16, fp16"),
    ("COURSE_THREADS", "0", "a whole number from 1 to"),
    ("COURSE_THREADS", "abc", "a whole number from 1 to"),
    ("COURSE_THREADS", "-2", "a whole number from 1 to"),
    ("COURSE_THREADS", "1.5", "a whole number from 1 to"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_VALUES)
def test_a_bad_value_gets_one_line_naming_variable_value_and_allowed_values(
    name: str, value: str, allowed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as err:
        config.check_settings()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={value!r} is not valid: allowed {allowed}"), message
    assert "; " in message  # followed by how to fix it


def test_threads_default_and_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = os.cpu_count() or 1
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    assert config.thread_count() == cores
    monkeypatch.setenv("COURSE_THREADS", "1")
    assert config.thread_count() == 1
    monkeypatch.setenv("COURSE_THREADS", str(cores + 5))
    assert config.thread_count() == cores


def test_cache_that_is_a_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache.txt"
    target.write_text("not a folder")
    monkeypatch.setenv("COURSE_CACHE", str(target))
    with pytest.raises(ValueError) as err:
        config.cache_dir()
    message = str(err.value)
    assert message == (
        f"COURSE_CACHE={str(target)!r} is a file, not a folder; point COURSE_CACHE at a folder you "
        f"can write to, or unset it for ~/.cache/trustworthy-llm, or move that file away"
    )


def test_cache_that_cannot_be_created_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(
        ValueError,
        match=r"^COURSE_CACHE='.*/file/cache' cannot be created \(.+\); point "
        r"COURSE_CACHE at a folder you can write to",
    ):
        config.cache_dir()


def test_unwritable_cache_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    real_access = os.access
    if real_access(folder, os.W_OK):  # root writes anywhere: make the check see what a learner's account sees
        monkeypatch.setattr(config.os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))
    monkeypatch.setenv("COURSE_CACHE", str(folder))
    try:
        with pytest.raises(ValueError) as err:
            config.cache_dir()
    finally:
        folder.chmod(0o700)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"COURSE_CACHE={str(folder)!r} is not writable; point COURSE_CACHE at a folder")
    assert f"chmod u+rwx {folder}" in message


def test_data_and_results_come_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURSE_DATA", raising=False)
    monkeypatch.delenv("COURSE_RESULTS", raising=False)
    assert config.data_file() is None and config.results_override() is None
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "mine.csv"))
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "out"))
    assert config.data_file() == tmp_path / "mine.csv"
    assert config.results_override() == report.results_dir() == bench.results_for(ROOT) == tmp_path / "out"
    assert config.results_override({"COURSE_RESULTS": "/elsewhere"}) == Path("/elsewhere")


@pytest.mark.parametrize("command", [["run", "--only", "00"], ["bench", "--only", "00", "--modes", "fast"]])
def test_cli_stops_on_a_bad_setting_with_one_line(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("COURSE_DEVICE", "tpu")
    assert main(command) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "error: COURSE_DEVICE='tpu' is not valid: allowed auto, cpu, cuda, mps; unset it to let the course choose"
    ]
    assert not (tmp_path / "results").exists()
