"""Data: domains, the label rule, the committed splits, leakage checks, and learners' own files."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from course_utils import config, data


def test_domains_load_with_the_label_rule():
    sizes = {}
    for domain in data.DOMAINS:
        full = data.load_domain(domain, keep_neutral=True)
        kept = data.load_domain(domain)
        sizes[domain] = len(full)
        assert set(kept["label"]) == {0, 1}
        assert (kept["label"] == (kept["rating"] > 0)).all()
        assert len(full) - len(kept) == int((full["rating"] == 0).sum())
    assert sizes == {"movie": 10605, "amazon": 3708, "tweets": 4200, "nyt": 5190}


def test_unknown_domain_lists_valid_ones():
    with pytest.raises(ValueError, match="choose one of"):
        data.load_domain("imdb")


def test_committed_splits_are_reproducible_and_disjoint(movie, tmp_path):
    spec = data.split_spec()
    again = json.loads(data.make_movie_split_file(tmp_path / "movie.json").read_text())
    for name in ("rule", "seed", "train", "validation", "test", "duplicates_dropped"):
        assert spec[name] == again[name], f"{name} split differs from make_movie_split_file()"
    ids = [set(spec[n]) for n in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    splits = data.movie_splits()
    total = sum(splits.sizes().values())
    assert abs(len(splits.train) / total - 0.8) < 0.005 and abs(len(splits.test) / total - 0.1) < 0.005
    for frame in (splits.validation, splits.test):
        assert abs(frame["label"].mean() - splits.train["label"].mean()) < 0.01


def test_split_file_is_package_data_that_make_movie_split_file_rewrites(monkeypatch):
    """The splits ship inside course_utils (an installed course reads them); the generator writes that same file."""
    shipped = resources.files("course_utils").joinpath(data.SPLIT_RESOURCE)
    assert data.split_spec() == json.loads(shipped.read_text()) and len(data.split_spec()["test"]) == 1057
    assert not (config.repo_root() / "data" / "splits").exists(), "the split file moved into course_utils/splits/"
    written = []
    monkeypatch.setattr(data, "load_domain", lambda name: None)  # nothing is computed or written for real
    monkeypatch.setattr(data, "stratified_split", lambda frame: {})
    monkeypatch.setattr(data.store, "write_json", lambda path, payload: written.append(path))
    assert data.make_movie_split_file() == Path(str(shipped)) and written == [Path(str(shipped))]


def test_leakage_report_finds_exact_and_near_duplicates(movie):
    base = movie.iloc[:30].reset_index(drop=True)
    clean = data.Splits(base.iloc[:20], base.iloc[20:25], base.iloc[25:])
    assert data.leakage_report(clean).iloc[:, 1:].to_numpy().sum() == 0
    exact = base.iloc[[20]].assign(text=base.loc[20, "text"].upper())  # a validation row, shouted
    near = base.iloc[[25]].assign(text=base.loc[25, "text"].rstrip(".!") + " !!")  # a test row, re-punctuated
    dirty = data.Splits(pd.concat([base.iloc[:20], exact, near]), base.iloc[20:25], base.iloc[25:])
    report = data.leakage_report(dirty).set_index("splits")
    assert report.loc["train / validation", "exact"] == 1
    assert report.loc["train / test"].iloc[1] >= 1


def test_normalise_and_duplicate_groups():
    texts = ["Great  movie!", "great movie", "A completely different sentence about cats.", "GREAT MOVIE."]
    groups = data.duplicate_groups(texts)
    assert groups[0] == groups[1] == groups[3] != groups[2]
    assert data.normalise("Ｆｕｌｌ－width  ''quotes''") == "full width quotes"


def _write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def test_load_text_file_reads_csv_and_jsonl(tmp_path):
    csv_path = _write(tmp_path, "mine.csv", 'text,label\n"good, really",pos\nbad,neg\nfine,pos\n')
    frame = data.load_text_file(csv_path)
    assert frame["label_name"].tolist() == ["pos", "neg", "pos"] and frame["label"].tolist() == [1, 0, 1]
    jsonl = _write(tmp_path, "mine.jsonl", '{"text": "good", "label": 1}\n\n{"text": "bad", "label": 0}\n')
    assert data.load_text_file(jsonl)["label"].tolist() == [1, 0]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.csv", "sentence,label\nhi,pos\n", r"a\.csv line 1: no column 'text'.*rename"),
        ("b.csv", "text,label\nhi,pos\n  ,neg\n", r"b\.csv line 3: empty text; fill it in or delete"),
        ("c.csv", "text,label\nhi,pos\nho,pos\n", r"c\.csv: only one class \('pos'\)"),
        ("d.csv", b"text,label\nhi,pos\ncaf\xe9,neg\n", r"d\.csv line 3: byte 0xe9 is not UTF-8; re-save"),
        ("e.jsonl", '{"text": "hi", "label": 1}\n{"text": "ho", \n', r"e\.jsonl line 2: not valid JSON"),
        ("f.txt", "text,label\n", r"unsupported file type '\.txt'"),
        ("g.csv", "text,label\n", r"g\.csv: the file has no rows"),
        ("h.csv", "text,label\nhi,\n", r"h\.csv line 2: empty label"),
    ],
)
def test_malformed_files_get_errors_naming_file_row_and_fix(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        data.load_text_file(_write(tmp_path, name, content))


def test_course_splits_use_your_own_file(tmp_path, monkeypatch, movie):
    sample = data.subsample(movie, 60, seed=3)
    path = tmp_path / "own.csv"
    sample.assign(label=np.where(sample["label"] == 1, "yes", "no"))[["text", "label"]].to_csv(path, index=False)
    monkeypatch.setenv("COURSE_DATA", str(path))
    splits = data.course_splits()
    assert splits.label_names == ["no", "yes"] and sum(splits.sizes().values()) == 60
    assert splits.source == str(path)


def test_subsample_is_stratified_and_validated(movie):
    part = data.subsample(movie, 500, seed=0)
    assert len(part) == 500 and abs(part["label"].mean() - movie["label"].mean()) < 0.01
    with pytest.raises(ValueError, match="positive"):
        data.subsample(movie, 0)
