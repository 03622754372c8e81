"""Data: domains, the label rule, the committed splits, leakage checks, and learners' own files."""

from __future__ import annotations

import csv
import json
import warnings
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
        # header problems are on line 1, however many rows follow
        ("i.csv", 'text,lable\n"two\nlines",pos\nho,neg\n', r"i\.csv line 1: no column 'label'.*rename your column"),
        ("j.csv", "text,Text,label\nhi,ho,pos\n", r"j\.csv line 1: columns \['text', 'Text'\] all match 'text'"),
        ("k.csv", "text,label,label\nhi,pos,neg\n", r"k\.csv line 1: columns \['label', 'label'\].*delete all but"),
        ("l.csv", "text|label\nhi|pos\n", r"\['text\|label'\], splitting the header at comma, semicolon, tab\)"),
        ("m.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n', r"m\.jsonl line 2: no key 'text'"),
        ("n.jsonl", '{"text": "a", "TEXT": "b", "label": 1}\n', r"n\.jsonl line 1: keys \['text', 'TEXT'\] all match"),
        ("o.jsonl", '["hi", 1]\n', r"o\.jsonl line 1: a JSON list, not an object; write one object per line"),
        (
            "p.csv",
            "text,label\ngood, really,pos\n",
            r"p\.csv line 2: 3 fields.*put quotes around text that contains a comma",
        ),
        ("q.csv", 'text,label\n"two\nlines",\nho,neg\n', r"q\.csv line 2: empty label"),  # where the row starts
        ("r.csv", "text,label\nhi,pos\n".encode("utf-16"), r"r\.csv line 1: the file is UTF-16; re-save it as UTF-8"),
    ],
)
def test_malformed_files_get_errors_naming_file_row_and_fix(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        data.load_text_file(_write(tmp_path, name, content))


@pytest.mark.parametrize(
    "name, content",
    [
        ("bom.csv", "\ufefftext,label\nhi,pos\nho,neg\n".encode()),  # Excel's "CSV UTF-8"
        ("crlf.csv", b"text,label\r\nhi,pos\r\nho,neg\r\n"),
        ("cr.csv", b"text,label\rhi,pos\rho,neg\r"),  # old Excel for Mac
        ("ints.csv", "text,label\nhi,1\nho,0\n"),
        ("blank_rows.csv", "\ntext,label\nhi,pos\n,\n\nho,neg\n\n"),
        ("bom_crlf.jsonl", '\ufeff{"text": "hi", "label": 1}\r\n{"text": "ho", "label": 0}\r\n'.encode()),
        ("trailing.jsonl", '{"text": "hi", "label": "pos"}\n{"text": "ho", "label": "neg"}\n\n  \n'),
    ],
)
def test_load_text_file_reads_files_as_saved(tmp_path, name, content):
    frame = data.load_text_file(_write(tmp_path, name, content))
    assert frame["text"].tolist() == ["hi", "ho"] and frame["label"].tolist() == [1, 0]


def test_load_text_file_reads_long_fields_and_restores_the_csv_limit(tmp_path, monkeypatch):
    limit = csv.field_size_limit()
    long = _write(tmp_path, "long.csv", f"text,label\n{'x' * 200_000},pos\nshort,neg\n")  # csv's default: 131,072
    assert data.load_text_file(long)["text"].str.len().tolist() == [200_000, 5]
    assert csv.field_size_limit() == limit
    monkeypatch.setattr(data, "_CSV_FIELD_CAP", 1000)
    unclosed = _write(tmp_path, "unclosed.csv", 'text,label\nhi,pos\n"oops,neg\n' + "more text,pos\n" * 100)
    with pytest.raises(ValueError, match=r"unclosed\.csv line 3: a field is longer than 1,000 characters; close"):
        data.load_text_file(unclosed)
    assert csv.field_size_limit() == limit


@pytest.mark.parametrize(
    "content, texts",
    [
        ('text;label\n"good, really; yes";pos\nbad, sadly;neg\n', ["good, really; yes", "bad, sadly"]),
        ('text\tlabel\n"good, really"\tpos\nbad; sadly\tneg\n', ["good, really", "bad; sadly"]),
    ],
    ids=["semicolon", "tab"],
)
def test_load_text_file_finds_the_separator_from_the_header(tmp_path, content, texts):
    frame = data.load_text_file(_write(tmp_path, "sep.csv", content))
    assert frame["text"].tolist() == texts and frame["label_name"].tolist() == ["pos", "neg"]


@pytest.mark.parametrize(
    "name, content",
    [
        ("upper.csv", "Text,Label\nhi,pos\nho,neg\n"),
        ("spaced.csv", " TEXT , label \nhi,pos\nho,neg\n"),
        ("keys.jsonl", '{"Text": "hi", " LABEL ": "pos"}\n{"text": "ho", "label": "neg"}\n'),
    ],
)
def test_column_names_match_ignoring_case_and_spaces(tmp_path, name, content):
    frame = data.load_text_file(_write(tmp_path, name, content))
    assert frame["text"].tolist() == ["hi", "ho"] and frame["label_name"].tolist() == ["pos", "neg"]


def test_labels_differing_only_in_case_or_spaces_warn_and_stay_separate(tmp_path):
    rows = ["hi,pos\n"] * 3 + ["ho,POS\n"] * 2 + ["ha,neg\n", "he,n eg\n"]
    path = _write(tmp_path, "mixed.csv", "text,label\n" + "".join(rows))
    expected = r"mixed\.csv: labels that differ only in case or spaces: 'POS' / 'pos' \(2 / 3 rows\); 'n eg' / 'neg' "
    with pytest.warns(UserWarning, match=expected + r"\(1 / 1 rows\); they are treated as different classes; fix"):
        frame = data.load_text_file(path)
    assert frame["label_name"].nunique() == 4


def test_clean_labels_do_not_warn(tmp_path):
    path = _write(tmp_path, "clean.csv", "text,label\nhi, pos\nho,neg \nha,Neutral\n")  # spaces around are stripped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.load_text_file(path)["label_name"].tolist() == ["pos", "neg", "Neutral"]


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


def test_optional_group_rating_and_domain_columns_are_kept(tmp_path):
    path = _write(
        tmp_path, "mine.csv", "Text;Label;GROUP;rating\nslow refund;bad;c1;-2\nquick fix;good;c2;\nok;good;;3.5\n"
    )
    frame = data.load_text_file(path)
    assert list(frame.columns) == ["id", "text", "label_name", "group", "rating", "label"]
    assert frame["group"].tolist()[:2] == ["c1", "c2"] and pd.isna(frame["group"].iloc[2])
    assert frame["rating"].iloc[0] == -2.0 and pd.isna(frame["rating"].iloc[1])
    plain = data.load_text_file(_write(tmp_path, "plain.csv", "text,label\na,x\nb,y\n"))
    assert list(plain.columns) == ["id", "text", "label_name", "label"]  # absent columns are not invented
    with pytest.raises(ValueError, match=r"line 2: rating 'high' is not a number"):
        data.load_text_file(_write(tmp_path, "bad.csv", "text,label,rating\na,x,high\nb,y,1\n"))
    jsonl = _write(
        tmp_path, "mine.jsonl", '{"text": "a", "label": "x", "Domain": "mail"}\n{"text": "b", "label": "y"}\n'
    )
    assert data.load_text_file(jsonl)["domain"].tolist()[0] == "mail"


def _grouped_file(tmp_path, movie, n_groups: int):
    """Movie sentences written as if by `n_groups` users (five or more each, both labels mixed)."""
    sample = data.subsample(movie, 400, seed=4).reset_index(drop=True)
    users = [f"user{i % n_groups}" for i in range(len(sample))]
    path = tmp_path / f"users{n_groups}.csv"
    sample.assign(group=users, label=np.where(sample["label"] == 1, "pos", "neg"))[["text", "label", "group"]].to_csv(
        path, index=False
    )
    return path


def test_many_groups_split_whole_groups_few_groups_split_rows(tmp_path, monkeypatch, movie, capsys):
    from course_utils import owndata

    monkeypatch.setenv("COURSE_DATA", str(_grouped_file(tmp_path, movie, 40)))
    splits = owndata.chapter_splits("00_finetuning")
    users = [set(getattr(splits, name)["group"]) for name in ("train", "validation", "test")]
    assert splits.split_by == "groups" and not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    assert sum(map(len, users)) == 40 and 0.7 < len(splits.train) / sum(splits.sizes().values()) < 0.9
    assert all(set(getattr(splits, n)["label"]) == {0, 1} for n in ("train", "validation", "test"))
    assert "split by your group column: 40 groups, each in one split only" in capsys.readouterr().out
    assert data.course_splits().fingerprint() == splits.fingerprint()  # the same split every time
    monkeypatch.setenv("COURSE_DATA", str(_grouped_file(tmp_path, movie, 5)))  # like the e-mail folders
    few = data.course_splits()
    assert few.split_by == "rows" and set(few.train["group"]) & set(few.test["group"])


def test_groups_that_cannot_give_every_split_every_class_split_rows(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(200)],
            "text": [f"note number {i}" for i in range(200)],
            "label": [0] * 190 + [1] * 10,
            "group": [f"g{i // 5}" for i in range(200)],
        }
    )
    assert data.group_split(frame) is None  # the 10 positives are two groups: at most two splits can have them
    assert data.group_split(frame.drop(columns="group")) is None
