"""The one cache layer: where cached results live, the key that names them, and atomic writes.

Every cached result (fine-tuned checkpoints, encoded features, private runs, extracted assets) is stored under
`config.cache_dir()/<kind>/<key>` with a key from `key(*parts)`: a hash of EVERY argument that changes the
result. `key` accepts what those arguments are (numbers, strings, dataclasses, data frames, arrays, tensors,
torch modules) and refuses anything it cannot hash faithfully, so a new argument cannot be left out silently.

Every write goes to a temporary name beside its target and is renamed into place (`os.replace` is atomic on one
file system): a reader sees the old result or the new one, never half of one, and a writer that fails midway
leaves the old target as it was and no temporary behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import config

KEY_LENGTH = 16  # hex characters: 64 bits, ample for a personal cache


OMIT_DEFAULT = "omit_default_from_key"  # field metadata: a field added later keeps old keys while at its default


def _keyed(part: object, f: dataclasses.Field) -> bool:
    """Whether a dataclass field enters the key: always, unless marked OMIT_DEFAULT and left at its default."""
    return not (f.metadata.get(OMIT_DEFAULT) and getattr(part, f.name) == f.default)


def _update(digest, part: object) -> None:
    """Feed one argument into the hash, tagged with its type so that 1, 1.0 and '1' differ."""
    if part is None or isinstance(part, (bool, int, str)):
        digest.update(json.dumps([type(part).__name__, part]).encode())
    elif isinstance(part, float):
        digest.update(f"float:{part!r}".encode() if math.isfinite(part) else f"float:{part}".encode())
    elif isinstance(part, Path):
        digest.update(f"path:{part}".encode())
    elif dataclasses.is_dataclass(part) and not isinstance(part, type):
        digest.update(f"dataclass:{type(part).__qualname__}".encode())
        _update(digest, {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if _keyed(part, f)})
    elif isinstance(part, Mapping):
        digest.update(f"map:{len(part)}".encode())
        for name in sorted(part, key=str):
            _update(digest, str(name))
            _update(digest, part[name])
    elif isinstance(part, (list, tuple)):
        digest.update(f"seq:{len(part)}".encode())
        for item in part:
            _update(digest, item)
    elif isinstance(part, pd.DataFrame):
        digest.update(f"frame:{list(map(str, part.columns))}".encode())
        for column in part.columns:
            _update(digest, part[column])
    elif isinstance(part, pd.Series):
        _update(digest, part.tolist() if part.dtype == object else part.to_numpy())
    elif isinstance(part, np.ndarray):
        array = np.ascontiguousarray(part)
        if array.dtype == object:
            _update(digest, array.tolist())
        else:
            digest.update(f"array:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
    elif isinstance(part, np.generic):
        _update(digest, part.item())
    elif isinstance(part, torch.Tensor):
        tensor = part.detach().cpu().contiguous()
        digest.update(f"tensor:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(part, torch.nn.Module):
        digest.update(f"module:{type(part).__qualname__}".encode())
        _update(digest, dict(part.state_dict()))
    else:
        raise TypeError(
            f"store.key cannot hash a {type(part).__name__}; pass numbers, strings, dataclasses, "
            "frames, arrays, tensors or modules (or a string that identifies it)"
        )


def key(*parts: object) -> str:
    """A short hex key naming a cached result: a sha256 of every part, in order, each tagged with its type."""
    digest = hashlib.sha256()
    for part in parts:
        _update(digest, part)
    return digest.hexdigest()[:KEY_LENGTH]


def path(kind: str, name: str) -> Path:
    """The cache location of one result: COURSE_CACHE/<kind>/<name> (the folder is created)."""
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"cache kind must be a plain folder name like 'features', got {kind!r}")
    folder = config.cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`, on failure delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    """Write text (UTF-8, '\\n' line ends) atomically."""
    with atomic_file(target) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def write_json(target: Path, payload: object, indent: int | None = 1) -> None:
    """Write JSON atomically."""
    write_text(target, json.dumps(payload, indent=indent) + "\n")


def write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Build a folder with `write(tmp)` beside `target`, then swap it in; the old copy survives a failure."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    old = target.with_name(f".{target.name}-old")
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old.exists() and not target.exists():
                os.replace(old, target)  # put the previous copy back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove(target: Path) -> None:
    """Delete a cached file or folder if it is there (COURSE_RETRAIN=1)."""
    target = Path(target)
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
