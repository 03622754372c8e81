"""Data preparation: text cleaning, PII redaction, the raters behind each label and their agreement (chapter 01).

Each cleaning step is a pure `str -> str` function; `clean_frame` runs them in order and reports how many
rows each one changed and how many rows it dropped, so nothing disappears silently. `redact_pii` replaces
URLs, e-mail addresses, Twitter handles and phone numbers with placeholders. `load_ratings` reads the
individual raters' scores (-4..+4) behind each sentence's mean rating; `sign_agreement` and
`krippendorff_alpha_interval` measure how far the raters agree, and `label_disagreement` lists sentences
whose course label (data.LABEL_RULE) is not what most of their raters said.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import assets, data

MIN_LETTERS = 2
DROP_STEP = "dropped: empty or garbage"
SCALE = (-4, 4)
SIGN_NAMES = ("negative", "neutral", "positive")


def _require_columns(frame: pd.DataFrame, columns: list[str], who: str) -> None:
    """Raise a ValueError naming the columns a function needs but the frame lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{who} needs columns {columns}, got {list(frame.columns)}; add or rename {missing}")


# ---------------------------------------------------------------------------------------------- cleaning

# Only well-formed entities (ending in ';') are decoded: html.unescape alone would also turn "&not" inside
# "this&nothing" into "¬". The loop undoes double escaping such as "&amp;amp;" and "&amp;#38;" (tweets, amazon).
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

# The movie and NYT files write a double quote as two apostrophes: ''Conan''. Exactly two become '"'; three
# are a quote beside a real apostrophe ("'Accord.'''" closes both, "'''tis" opens both). A single
# apostrophe (don't, students') is never touched, and runs of four or more are left as they are.
_QUOTE_TRIPLE_CLOSE = re.compile(r"(?<=[^\s'])'''(?!')")
_QUOTE_TRIPLE_OPEN = re.compile(r"(?<!\S)'''(?=[^\s'])")
_QUOTE_DOUBLE = re.compile(r"(?<!')''(?!')")


def unescape_html(text: str) -> str:
    """Decode HTML entities (&amp; &lt; &quot; &#39;), also double-escaped ones like &amp;amp; (chapter 01)."""
    for _ in range(3):
        decoded = _ENTITY.sub(lambda match: html.unescape(match.group()), text)
        if decoded == text:
            break
        text = decoded
    return text


def unicode_nfkc(text: str) -> str:
    """Unicode NFKC: full-width letters, ligatures and no-break spaces become their plain forms (chapter 01)."""
    return unicodedata.normalize("NFKC", text)


def fix_quote_artefacts(text: str) -> str:
    """Turn the movie/NYT two-apostrophe quotes ''x'' into "x", keeping real apostrophes (chapter 01)."""
    text = _QUOTE_TRIPLE_CLOSE.sub("'\"", text)
    text = _QUOTE_TRIPLE_OPEN.sub("\"'", text)
    return _QUOTE_DOUBLE.sub('"', text)


def collapse_whitespace(text: str) -> str:
    """Replace each run of spaces, tabs and line breaks by one space and trim both ends (chapter 01)."""
    return " ".join(text.split())


# Order matters: entities first (a decoded &#65313; or &nbsp; still needs NFKC), NFKC before the quote fix
# (it maps the full-width apostrophe to "'"), whitespace last (earlier steps can leave double spaces).
STEPS: dict[str, Callable[[str], str]] = {
    "unescape_html": unescape_html,
    "unicode_nfkc": unicode_nfkc,
    "fix_quote_artefacts": fix_quote_artefacts,
    "collapse_whitespace": collapse_whitespace,
}


def is_garbage(text: str) -> bool:
    """True when a text has fewer than MIN_LETTERS letters: empty, punctuation, emoticons, numbers (chapter 01)."""
    return sum(ch.isalpha() for ch in text) < MIN_LETTERS


def _resolve_steps(steps: Sequence[str] | Mapping[str, Callable[[str], str]] | None) -> dict:
    """The steps to run: all of STEPS, a list of their names, or your own name -> function mapping."""
    if steps is None:
        return dict(STEPS)
    if isinstance(steps, Mapping):
        return dict(steps)
    if isinstance(steps, str):
        raise ValueError(f"steps must be a list of step names, got the string {steps!r}; pass [{steps!r}]")
    unknown = [name for name in steps if name not in STEPS]
    if unknown:
        raise ValueError(f"unknown cleaning steps {unknown}; choose from {list(STEPS)}")
    return {name: STEPS[name] for name in steps}


def clean_frame(
    frame: pd.DataFrame, steps: Sequence[str] | Mapping[str, Callable[[str], str]] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean the text column step by step, drop empty/garbage rows; report rows changed per step (chapter 01)."""
    _require_columns(frame, ["text"], "clean_frame")
    texts = frame["text"].fillna("").astype(str)
    rows = []
    for name, step in _resolve_steps(steps).items():
        cleaned = texts.map(step)
        rows.append({"step": name, "rows": int((cleaned != texts).sum())})
        texts = cleaned
    garbage = texts.map(is_garbage).to_numpy(dtype=bool)
    rows.append({"step": DROP_STEP, "rows": int(garbage.sum())})
    cleaned_frame = frame.assign(text=texts)[~garbage].reset_index(drop=True)
    return cleaned_frame, pd.DataFrame(rows, columns=["step", "rows"])


# ---------------------------------------------------------------------------------------------- PII

# Applied in this order so that no earlier match is taken apart by a later pattern:
#   URL    http://, https:// or www. up to the next space; trailing . , ; : ! ? ) ] } ' stay outside (prose).
#   EMAIL  local part of letters, digits, . + % - that neither starts nor ends with "." (Twitter's ".@name"
#          and "eye.@name" stay handles); a domain, with or without a dot ending: the tweets' addresses
#          were anonymised to name@anonymous, which is still an address ("RT@x" is a retweet, not one).
#   USER   @ + letters, digits, _ not glued to a word (so never an e-mail's @), or glued to a retweet's "RT";
#          a lone @ stays.
#   PHONE  +CC then 3-5 digit groups (+44 20 7946 0958), or US (555) 123-4567 / 555-123-4567 /
#          555.123.4567 / 555 123 4567 (same separator twice), optional leading 1; never glued to letters,
#          digits, $ or a decimal point, and 8-15 digits in all: years, 3-2, 10:30 and $19.99 stay.
PII_PATTERNS: dict[str, re.Pattern] = {
    "URL": re.compile(r"(?<![\w@.-])(?:https?://|www\.)[^\s<>\"]*[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE),
    "EMAIL": re.compile(
        r"(?<![\w.+%-])(?!RT@)[\w%+-](?:[\w.+%-]*[\w%+-])?"
        r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?:\.[A-Za-z]{2,})?\b"
    ),
    "USER": re.compile(r"(?:(?<![\w@])|(?<=\bRT))@[A-Za-z0-9_]+"),
    "PHONE": re.compile(
        r"(?<![\w$.+-])(?:"
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
        r"|(?:1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
        r"|(?:1[ .-])?\d{3}([ .-])\d{3}\1\d{4}"
        r")(?!\w|[-.:/]\d)"
    ),
}
PLACEHOLDERS = {kind: f"[{kind}]" for kind in PII_PATTERNS}
PHONE_DIGITS = (8, 15)


def _is_phone(candidate: str) -> bool:
    """True when a phone-shaped match has a plausible number of digits (E.164 allows at most 15)."""
    digits = sum(ch.isdigit() for ch in candidate)
    return PHONE_DIGITS[0] <= digits <= PHONE_DIGITS[1]


def _replace_counted(kind: str, text: str) -> tuple[str, int]:
    """Replace one kind of PII by its placeholder; return the new text and how many were replaced."""
    hits = 0

    def swap(match: re.Match) -> str:
        nonlocal hits
        if kind == "PHONE" and not _is_phone(match.group()):
            return match.group()
        hits += 1
        return PLACEHOLDERS[kind]

    return PII_PATTERNS[kind].sub(swap, text), hits


def redact_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace URLs, e-mails, @handles, phone numbers by [URL] [EMAIL] [USER] [PHONE]; count each (chapter 01)."""
    if not isinstance(text, str):
        raise ValueError(f"redact_pii needs a string, got {type(text).__name__}; drop empty rows with clean_frame")
    counts = {}
    for kind in PII_PATTERNS:
        text, counts[kind] = _replace_counted(kind, text)
    return text, counts


def redact_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Redact PII in the text column; also return a table of kind, replacements and rows affected (chapter 01)."""
    _require_columns(frame, ["text"], "redact_frame")
    results = [redact_pii(text) for text in frame["text"]]
    counts = pd.DataFrame([found for _, found in results], columns=list(PII_PATTERNS), dtype=int)
    table = pd.DataFrame(
        {
            "kind": list(PII_PATTERNS),
            "placeholder": list(PLACEHOLDERS.values()),
            "replacements": [int(counts[k].sum()) for k in PII_PATTERNS],
            "rows affected": [int((counts[k] > 0).sum()) for k in PII_PATTERNS],
        }
    )
    return frame.assign(text=[text for text, _ in results]), table


# ---------------------------------------------------------------------------------------------- raters


def _parse_scores(field: str, where: str) -> list[int]:
    """Parse a '[3, 2, -1]' field into integers on the -4..+4 scale, naming the line on failure."""
    inner = field.strip()
    if not (inner.startswith("[") and inner.endswith("]")) or not inner[1:-1].strip():
        raise ValueError(f"{where}: scores {field!r} are not a non-empty [..] list; write them like [3, 2, -1]")
    try:
        scores = [int(part) for part in inner[1:-1].split(",")]
    except ValueError:
        raise ValueError(
            f"{where}: scores {field!r} hold something that is not an integer; use comma-separated whole numbers"
        ) from None
    if min(scores) < SCALE[0] or max(scores) > SCALE[1]:
        raise ValueError(f"{where}: a score in {field!r} is outside the {SCALE[0]}..{SCALE[1]} scale; fix the line")
    return scores


def _parse_ratings_line(line: str, where: str) -> tuple[str, float, float, list[int]]:
    """One line of a ratings file: id, mean, std and the raters' scores (checked against the mean)."""
    parts = line.split("\t")
    if len(parts) != 4:
        raise ValueError(
            f"{where}: expected 4 tab-separated fields (id, mean, std, [scores]), got {len(parts)}; fix the line"
        )
    try:
        mean, std = float(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"{where}: mean {parts[1]!r} or std {parts[2]!r} is not a number; fix the line") from None
    scores = _parse_scores(parts[3], where)
    if abs(mean - sum(scores) / len(scores)) > 1e-3:
        raise ValueError(
            f"{where}: mean {mean} differs from the mean of its {len(scores)} scores "
            f"({sum(scores) / len(scores):.4f}); the line is corrupted"
        )
    return parts[0].strip(), mean, std, scores


def read_ratings(path: Path) -> pd.DataFrame:
    """Parse a *_anonDataRatings.txt file (id, mean, std, [scores]) with line-numbered errors (chapter 01)."""
    path = Path(path)
    lines = path.read_bytes().decode("utf-8-sig").splitlines()
    rows = [
        _parse_ratings_line(line, f"{path} line {number}") for number, line in enumerate(lines, start=1) if line.strip()
    ]
    if not rows:
        raise ValueError(f"{path}: no ratings in the file; check that it is an *_anonDataRatings.txt file")
    frame = pd.DataFrame(rows, columns=["id", "mean", "std", "scores"])
    repeated = frame["id"][frame["id"].duplicated()]
    if len(repeated):
        raise ValueError(f"{path}: id {repeated.iloc[0]!r} appears more than once; keep one line per sentence")
    frame["n_raters"] = frame["scores"].map(len).astype(int)
    return frame


def load_ratings(domain: str) -> pd.DataFrame:
    """The individual raters' scores of one domain: id, mean, std, scores (list of int), n_raters (chapter 01)."""
    stem = data._check_domain(domain)
    return read_ratings(assets.data_dir() / f"{stem}_anonDataRatings.txt")


# ---------------------------------------------------------------------------------------------- agreement


def _flatten_scores(scores_lists: Iterable[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Unit index and value of every finite score (NaN means missing), and the number of units."""
    lists = []
    for unit in scores_lists:
        if np.ndim(unit) != 1:
            raise ValueError(f"each unit must be a list of scores, got {unit!r}; pass one list per sentence")
        try:
            lists.append(np.asarray(unit, dtype=float))
        except (TypeError, ValueError):
            raise ValueError(f"scores must be numbers, got {unit!r}; pass lists of numbers") from None
    if not lists:
        raise ValueError("no units of scores were given, got an empty collection; pass e.g. ratings['scores']")
    units = np.repeat(np.arange(len(lists)), [len(unit) for unit in lists])
    values = np.concatenate(lists)
    keep = np.isfinite(values)
    return units[keep], values[keep], len(lists)


def sign_counts(scores_lists: Iterable[Sequence[float]]) -> np.ndarray:
    """How many raters gave each unit a negative, zero and positive score: an (n_units, 3) array (chapter 01)."""
    units, values, n_units = _flatten_scores(scores_lists)
    cells = units * 3 + np.sign(values).astype(int) + 1
    return np.bincount(cells, minlength=3 * n_units).reshape(n_units, 3)


def sign_agreement(scores_lists: Iterable[Sequence[float]]) -> float:
    """Mean over units of the share of raters whose score sign is the unit's majority sign (chapter 01)."""
    counts = sign_counts(scores_lists)
    totals = counts.sum(axis=1)
    rated = totals > 0
    if not rated.any():
        raise ValueError("no unit has a score, got only empty lists; pass at least one rated unit")
    return float((counts.max(axis=1)[rated] / totals[rated]).mean())  # a tie for the top gives the same share


def krippendorff_alpha_interval(scores_lists: Iterable[Sequence[float]]) -> float:
    """Krippendorff's alpha (interval), any number of raters per unit; units rated once skipped (chapter 01)."""
    units, values, n_units = _flatten_scores(scores_lists)
    pairable = np.bincount(units, minlength=n_units)[units] >= 2
    units, values = units[pairable], values[pairable]
    if values.size == 0:
        raise ValueError("no unit has 2 or more ratings; alpha compares raters within units, so rate units twice")
    if np.ptp(values) == 0:
        raise ValueError(
            f"every pairable rating is {values[0]:g}, so alpha is undefined (no expected "
            "disagreement); use data whose ratings vary"
        )
    values = values - values.mean()  # alpha does not change under a shift; this keeps the sums small
    m = np.bincount(units, minlength=n_units).astype(float)
    s1 = np.bincount(units, weights=values, minlength=n_units)
    s2 = np.bincount(units, weights=values**2, minlength=n_units)
    used = m >= 2
    n = values.size
    # Sum of (v_i - v_j)^2 over ordered pairs i != j of m values = 2 (m * sum v^2 - (sum v)^2).
    observed = (2 * (m[used] * s2[used] - s1[used] ** 2) / (m[used] - 1)).sum() / n
    expected = 2 * (n * (values**2).sum() - values.sum() ** 2) / (n * (n - 1))
    return float(1 - observed / expected)


def majority_names(counts: np.ndarray) -> np.ndarray:
    """The most chosen sign per row of sign counts: 'negative', 'neutral', 'positive' or 'tie' (chapter 01)."""
    top = counts.max(axis=1, keepdims=True)
    tied = (counts == top).sum(axis=1) > 1
    return np.where(tied, "tie", np.array(SIGN_NAMES)[counts.argmax(axis=1)])


def label_disagreement(frame_with_labels: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    """Sentences whose label's sign does not have strictly the most raters, with each side's share (chapter 01)."""
    _require_columns(frame_with_labels, ["id", "label"], "label_disagreement (frame)")
    _require_columns(ratings, ["id", "scores"], "label_disagreement (ratings)")
    labels = frame_with_labels["label"]
    if not labels.isin([0, 1]).all():
        raise ValueError(
            f"labels must be 0 or 1, got {sorted(set(labels[~labels.isin([0, 1])]), key=str)[:3]}; "
            "load the frame with keep_neutral=False"
        )
    scores = frame_with_labels["id"].map(ratings.set_index("id")["scores"])
    if scores.isna().any():
        missing = frame_with_labels["id"][scores.isna()]
        raise ValueError(
            f"{len(missing)} sentences have no ratings (first id {missing.iloc[0]!r}); "
            "pass the ratings of the same domain"
        )
    counts = sign_counts(scores)
    side = np.where(labels.to_numpy() == 1, 2, 0)  # column of the label's sign in counts
    rows = np.arange(len(counts))
    others = counts.copy()
    others[rows, side] = -1
    disagree = counts[rows, side] <= others.max(axis=1)
    shares = counts / counts.sum(axis=1, keepdims=True)
    keep = [c for c in ("id", "text", "rating", "label") if c in frame_with_labels.columns]
    out = frame_with_labels[keep].assign(
        n_raters=counts.sum(axis=1),
        **{f"share_{name}": shares[:, i] for i, name in enumerate(SIGN_NAMES)},
        majority=majority_names(counts),
    )
    return out[disagree].reset_index(drop=True)
