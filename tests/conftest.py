"""Shared fixtures: a tiny real-data frame and the offline tokenizer (assets are prepared by `bash course test`)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("COURSE_FAST", "1")  # the suite always runs the notebooks in fast mode

from course_utils import data, modeling


@pytest.fixture(scope="session")
def movie() -> data.pd.DataFrame:
    """The whole movie domain under the course's label rule."""
    return data.load_domain("movie")


@pytest.fixture(scope="session")
def tiny_splits(movie) -> data.Splits:
    """48/16/16 real movie sentences: enough to run the training loop in seconds."""
    sample = data.subsample(movie, 80, seed=1)
    return data.Splits(
        sample.iloc[:48].reset_index(drop=True),
        sample.iloc[48:64].reset_index(drop=True),
        sample.iloc[64:].reset_index(drop=True),
    )


@pytest.fixture(scope="session")
def tokenizer():
    """The offline MiniLM tokenizer."""
    return modeling.load_tokenizer()


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    """A private COURSE_CACHE that points its assets at the real prepared ones (no download)."""
    from course_utils import config

    real = config.cache_dir()
    (tmp_path / "assets").symlink_to(real / "assets")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    return tmp_path
