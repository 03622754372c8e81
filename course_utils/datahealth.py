"""A data-health report for a labelled text file: what to know before training on it.

Sizes per class, length distribution in characters and in the model's tokens, exact and near duplicates (and
duplicates that carry different labels), empty-looking and very long texts, encoding damage (replacement
characters, mojibake, control characters, HTML) and text that is not English, which the course's English
WordPiece vocabulary handles poorly. Each check that finds something adds one plain sentence to `problems`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import assets
from .data import Splits, load_domain, load_text_file, near_duplicate_pairs, normalise

NEAR_SAMPLE = 4000  # near duplicates are counted on at most this many texts (the comparison is quadratic)
SHORT_WORDS = 3  # a text with fewer words than this carries little to classify
LONG_CHARS = 5000  # characters: far past what a 512-token model reads
MOJIBAKE = re.compile("Ã[\u0080-\u00bf]|â€|Â[\u00a0-\u00bf ]")  # UTF-8 read as Latin-1, the common damage
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
HTML = re.compile(r"<(?:br|p|div|span|a|td|tr|table|html|body|font|img)\b[^>]*>|&(?:nbsp|amp|lt|gt|quot);", re.I)
ENGLISH = frozenset("the a an and or of to in is are was it this that for with on not be have you i".split())
TOKEN_LIMIT = 512  # the course encoder's positions


@dataclass(frozen=True)
class HealthReport:
    """The checks' figures (`table`), rows per class (`classes`) and a sentence per problem found."""

    table: pd.DataFrame
    classes: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The problems in plain words, or a line saying none was found."""
        if not self.problems:
            return "No problem found: sizes, lengths, duplicates, encoding and language look usable."
        return "\n".join(f"- {p}" for p in self.problems)


def _share(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else 0.0


def english_share(texts: list[str]) -> float:
    """Share of texts (5 words or more) that contain at least one common English function word."""
    words = [re.findall(r"[a-z']+", t.lower()) for t in texts]
    long_enough = [set(w) for w in words if len(w) >= 5]
    return _share(np.array([bool(w & ENGLISH) for w in long_enough])) if long_enough else 1.0


def latin_share(texts: list[str]) -> float:
    """Share of all letters that are ASCII (Latin) letters: low for Cyrillic, Greek, CJK or Arabic text."""
    letters = [ch for t in texts for ch in t if ch.isalpha()]
    return _share(np.array([ch.isascii() for ch in letters])) if letters else 1.0


def health_report(
    frame: pd.DataFrame,
    label_names: list[str] | None = None,
    tokenizer=None,
    near_threshold: float = 0.9,
    seed: int = 0,
) -> HealthReport:
    """Check a frame with `text` and `label` columns; token lengths need a tokenizer (skipped without one)."""
    for column in ("text", "label"):
        if column not in frame:
            raise ValueError(f"health_report needs a '{column}' column; found {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError("health_report got no rows; load a file with at least one row per class")
    texts = frame["text"].astype(str).tolist()
    labels = frame["label"].to_numpy()
    names = label_names or [str(v) for v in sorted(set(labels))]
    rows: list[tuple[str, object]] = [("rows", len(texts))]
    problems: list[str] = []

    counts = pd.Series(labels).value_counts().sort_index()
    classes = pd.DataFrame({"rows": counts.to_numpy(), "share": (counts / counts.sum()).round(3).to_numpy()})
    classes.index = [
        names[int(i)] if isinstance(i, (int, np.integer)) and int(i) < len(names) else str(i) for i in counts.index
    ]
    ratio = counts.max() / counts.min()
    rows.append(("largest / smallest class", round(float(ratio), 2)))
    if ratio > 1.5:
        problems.append(
            f"classes are imbalanced: the largest has {ratio:.1f}x the rows of the smallest "
            f"('{classes['rows'].idxmax()}' {counts.max()}, '{classes['rows'].idxmin()}' {counts.min()})"
        )
    if counts.min() < 100:
        problems.append(
            f"'{classes['rows'].idxmin()}' has only {counts.min()} rows: "
            "fine-tuning usually needs at least 100 per class"
        )

    chars = np.array([len(t) for t in texts])
    words = np.array([len(t.split()) for t in texts])
    rows += [("median characters", int(np.median(chars))), ("max characters", int(chars.max()))]
    if tokenizer is not None:
        tokens = np.array([len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]])
        rows += [
            ("median tokens", int(np.median(tokens))),
            ("95th percentile tokens", int(np.percentile(tokens, 95))),
            (f"share over {TOKEN_LIMIT} tokens", round(_share(tokens > TOKEN_LIMIT), 3)),
        ]
        if _share(tokens > TOKEN_LIMIT) > 0.05:
            problems.append(
                f"{_share(tokens > TOKEN_LIMIT):.0%} of texts are longer than the model's "
                f"{TOKEN_LIMIT} tokens: it reads only their beginning"
            )
    short, long = words < SHORT_WORDS, chars > LONG_CHARS
    rows += [
        (f"texts under {SHORT_WORDS} words", int(short.sum())),
        (f"texts over {LONG_CHARS:,} characters", int(long.sum())),
    ]
    if _share(short) > 0.02:
        problems.append(f"{int(short.sum())} texts have fewer than {SHORT_WORDS} words (placeholders or fragments?)")

    keys = pd.Series([normalise(t) for t in texts])
    exact = keys.duplicated(keep="first")
    conflicting = int((pd.DataFrame({"k": keys, "y": labels}).groupby("k")["y"].nunique() > 1).sum())
    rows += [
        ("exact duplicates (after normalising)", int(exact.sum())),
        ("duplicates with different labels", conflicting),
    ]
    if exact.sum():
        problems.append(
            f"{int(exact.sum())} rows repeat an earlier text (after lower-casing and dropping "
            "punctuation); the splits keep one of each"
        )
    if conflicting:
        problems.append(f"{conflicting} texts appear with different labels: label errors or an ambiguous task")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(texts), size=min(NEAR_SAMPLE, len(texts)), replace=False)
    near = len(near_duplicate_pairs([texts[i] for i in sample], threshold=near_threshold))
    rows.append((f"near-duplicate pairs (cosine >= {near_threshold}, {len(sample):,} texts)", near))

    damaged = {
        "replacement characters (U+FFFD)": np.array(["\ufffd" in t for t in texts]),
        "mojibake (UTF-8 read as Latin-1)": np.array([bool(MOJIBAKE.search(t)) for t in texts]),
        "control characters": np.array([bool(CONTROL.search(t)) for t in texts]),
        "HTML tags or entities": np.array([bool(HTML.search(t)) for t in texts]),
    }
    for what, mask in damaged.items():
        rows.append((f"texts with {what}", int(mask.sum())))
        if mask.sum():
            problems.append(f"{int(mask.sum())} texts contain {what}: clean them (chapter 01) or check the export")
    english, latin = english_share(texts), latin_share(texts)
    rows += [
        ("share of texts with English function words", round(english, 3)),
        ("share of letters that are Latin", round(latin, 3)),
    ]
    if english < 0.8 or latin < 0.9:
        problems.append(
            f"much of the text may not be English ({english:.0%} of texts have English function words, "
            f"{latin:.0%} of letters are Latin): MiniLM's vocabulary is English; expect weaker results"
        )
    table = pd.DataFrame(rows, columns=["check", "value"], dtype=object).set_index("check")
    return HealthReport(table, classes, problems)


def source_frame(splits: Splits) -> pd.DataFrame:
    """The rows the splits were made from, duplicates included: your file, the movie domain, or the online data."""
    if splits.source == "movie":
        return load_domain("movie")
    if splits.source == assets.ONLINE_DATASET_ID:
        return pd.concat([splits.train, splits.validation, splits.test], ignore_index=True)
    return load_text_file(splits.source)
