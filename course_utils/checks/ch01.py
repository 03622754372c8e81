"""Self-checks of chapter 01's exercises (data preparation)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..cleaning import PII_PATTERNS, krippendorff_alpha_interval
from ..data import normalise
from ..dataprep import jaccard
from ._common import Question, _call, _passed

__all__ = [
    "QUESTIONS",
    "check_redact_emails",
    "check_shingle_jaccard",
    "check_remove_leaked",
    "check_interval_alpha",
    "check_group_split",
]

# (text, what it tests, outputs accepted besides PII_PATTERNS["EMAIL"]'s). Handles come first, so that a pattern
# that eats them is told so. ".@name" (Twitter's public reply) stays a handle for the course's pattern, whose local
# part neither starts nor ends with "."; the exercise only says "letters, digits, . + % -", so a local part "." is
# accepted too.
_HANDLES, _ADDRESSES, _OTHER = "handles", "addresses", "other"
EMAIL_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("RT @someone: hi", _HANDLES, ()),
    ("RT@someone: loved it", _HANDLES, ()),
    ("thanks .@someone: great tip", _HANDLES, ("thanks [EMAIL]: great tip",)),
    ("@someone said hi", _HANDLES, ()),
    ("cc @some_one_99 and @x.", _HANDLES, ()),
    ("write to ana.lopez+news@mail.example.org today", _ADDRESSES, ()),
    ("first.last+tag@dept.uni.example.ac.uk wrote", _ADDRESSES, ()),
    ("mail karleem@anonymous now", _ADDRESSES, ()),
    ("two: a@b.co and c.d@e.io.", _ADDRESSES, ()),
    ("no address here", _OTHER, ()),
    ("price $19.99 at 10:30", _OTHER, ()),
    ("a lone @ sign", _OTHER, ()),
]
_EMAIL_HINTS = {
    _HANDLES: "leave handles alone: @name after a space or at the start, RT@name (a retweet) and .@name are not "
    "e-mail addresses",
    _ADDRESSES: "replace the whole address: a local part of letters, digits and . + % -, @, and a domain with any "
    "number of dots (subdomains) or none (name@anonymous), but not a sentence's final '.'",
    _OTHER: "text without an e-mail address must come back unchanged",
}


def check_redact_emails(fn: Callable) -> None:
    """Exercise 1.1: e-mail addresses become [EMAIL], nothing else changes; handles and retweets stay."""
    for text, kind, also in EMAIL_CASES:
        expected = PII_PATTERNS["EMAIL"].sub("[EMAIL]", text)
        got = _call("1.1", fn, text)
        assert got == expected or got in also, (
            f"Exercise 1.1: for {text!r} expected {expected!r}, got {got!r}; {_EMAIL_HINTS[kind]}"
        )
    _passed("1.1", len(EMAIL_CASES))


def check_shingle_jaccard(fn: Callable) -> None:
    """Exercise 1.2: Jaccard similarity of character k-gram sets of normalised text."""
    pairs = [
        ("A gorgeous, witty movie.", "a gorgeous witty movie"),
        ("Unwatchable.", "Unwatchable!"),
        ("The best film of the year", "The worst film of the year"),
        ("abc", "xyz"),
        ("same", "same"),
    ]
    for a, b in pairs:
        for k in (3, 5):
            expected, got = jaccard(a, b, k), float(_call("1.2", fn, a, b, k))
            assert abs(got - expected) < 1e-9, (
                f"Exercise 1.2: jaccard({a!r}, {b!r}, k={k}) expected {expected:.4f}, got {got:.4f}; normalise "
                "with data.normalise first, then |A & B| / |A | B| of the k-gram sets"
            )
    _passed("1.2", 2 * len(pairs))


def _leaky_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A toy train/test pair: some test sentences are in train again, changed in case, spacing or punctuation."""
    sentences = [
        f"sentence number {w} is {'good' if i % 2 else 'bad'}"
        for i, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split())
    ]
    train = pd.DataFrame(
        {
            "text": sentences[:6] + ["Sentence number NINE is GOOD!", "sentence   number ten, is bad"],
            "label": [0, 1, 0, 1, 0, 1, 1, 0],
        }
    )
    test = pd.DataFrame(
        {
            "text": sentences[6:] + ["sentence number two is good", "Sentence number one is bad."],
            "label": [0, 1, 0, 1, 0, 1, 1, 0],
        },
        index=[f"t{i}" for i in range(8)],
    )
    return train, test


def remove_leaked_reference(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Test rows whose normalised text is not among the training texts', in their order and with their index."""
    seen = set(train["text"].map(normalise))
    return test[~test["text"].map(normalise).isin(seen)]


def check_remove_leaked(fn: Callable) -> None:
    """Exercise 1.3: drop test sentences that are (after normalising) also in the training split."""
    train, test = _leaky_split()
    cases = [(train, test), (train.iloc[:0], test), (test.reset_index(drop=True), test)]
    for tr, te in cases:
        expected = remove_leaked_reference(tr, te)
        got = _call("1.3", fn, tr.copy(), te.copy())
        assert isinstance(got, pd.DataFrame), (
            f"Exercise 1.3: return the kept test rows as a data frame, got {type(got)}"
        )
        if len(got) == len(te) - sum(te["text"].isin(set(tr["text"]))) and len(got) != len(expected):
            hint = (
                "compare texts after data.normalise: a sentence scraped twice differs in case, spacing or punctuation"
            )
        elif set(got["text"]) - set(te["text"]):
            hint = "return rows of the TEST split: the leak is fixed by removing test sentences seen in training"
        elif list(got.index) != list(expected.index):
            hint = "keep the test rows' order and index (filter them, do not sort or reset the index)"
        else:
            hint = ""
        assert not hint and got.equals(expected), (
            f"Exercise 1.3: expected {len(expected)} test rows {list(expected.index)}, got {len(got)} "
            f"{list(got.index)}; {hint or 'keep exactly the test rows whose normalised text is not in train'}"
        )
    _passed("1.3", len(cases))


def check_interval_alpha(fn: Callable) -> None:
    """Exercise 1.4: Krippendorff's alpha (interval metric) from its definition, units with any number of ratings."""
    rng = np.random.default_rng(5)
    noisy = [list(t + rng.normal(0, 0.6, rng.integers(1, 6))) for t in rng.normal(0, 2, 30)]
    cases = {
        "a small table": [[1, 2, 1], [3, 3], [4, 5, 4, 4], [2], [1, 1, 2]],
        "perfect agreement": [[1, 1], [3, 3, 3], [2, 2], [5]],
        "disagreement beyond chance": [[1, 5], [5, 1], [1, 5], [5, 1]],
        "30 units, 1 to 5 raters each": noisy,
    }
    for name, units in cases.items():
        expected = krippendorff_alpha_interval(units)
        got = float(_call("1.4", fn, [list(u) for u in units]))
        if math.isclose(got, expected, abs_tol=1e-9):
            continue
        pairable = [u for u in units if len(u) >= 2]
        values = np.concatenate([np.asarray(u, float) for u in pairable])
        hint = "alpha = 1 - D_o / D_e with squared differences"
        if any(len(u) < 2 for u in units) and math.isclose(got, _alpha_keeping_singletons(units), abs_tol=1e-9):
            hint = "a unit rated once cannot disagree with anything: leave it out of both D_o and D_e (and of n)"
        elif math.isclose(got, 1 - np.mean([np.var(u) for u in pairable]) / np.var(values), abs_tol=1e-9):
            hint = (
                "D_o weights each pair within a unit by 1 / (m_u - 1), and D_e averages over pairs of different "
                "values, n (n - 1) of them: a ratio of variances is close, not equal"
            )
        raise AssertionError(f"Exercise 1.4 ({name}): expected alpha {expected:.4f}, got {got:.4f}; {hint}")
    _passed("1.4", len(cases))


def _alpha_keeping_singletons(units) -> float:
    """The typical mistake: units with one rating counted in n and in the expected disagreement."""
    values = np.concatenate([np.asarray(u, float) for u in units])
    n = values.size
    d_o = sum(((np.subtract.outer(u, u) ** 2).sum() / (len(u) - 1)) for u in map(np.asarray, units) if len(u) >= 2) / n
    d_e = (np.subtract.outer(values, values) ** 2).sum() / (n * (n - 1))
    return float(1 - d_o / d_e)


def check_group_split(fn: Callable) -> None:
    """Exercise 1.5: no group on both sides, about the asked test share, reproducible."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "text": [f"s{i}" for i in range(300)],
            "label": rng.integers(0, 2, 300),
            "movie_name": rng.choice([f"m{i}" for i in range(40)], 300),
        }
    )
    train, test = _call("1.5", fn, frame, "movie_name", 0.2, 0)
    assert not set(train["movie_name"]) & set(test["movie_name"]), "Exercise 1.5: a movie is on both sides"
    assert len(train) + len(test) == len(frame), "Exercise 1.5: every row must land in train or test"
    assert 0.1 < len(test) / len(frame) < 0.3, f"Exercise 1.5: test share {len(test) / len(frame):.2f}, asked 0.2"
    again = fn(frame, "movie_name", 0.2, 0)[1]
    assert list(again.index) == list(test.index), "Exercise 1.5: the same seed must give the same split"
    _passed("1.5", 4)


QUESTIONS = {
    "1.6": Question(
        "A careless merge put near-copies of test sentences into the training set; test accuracy rose from 0.77 to "
        "0.92. What does the rise show?",
        {
            "a": "the extra rows taught the model more about sentiment",
            "b": "part of the test set now measures memory of sentences seen in training",
            "c": "duplicates reduce label noise, so the model is genuinely better",
        },
        "b",
        {
            "a": "the rise is concentrated on the twinned test rows: accuracy on sentences without a twin "
            "barely moves.",
            "b": "a test sentence with a near-copy in training is answered from memory; it no longer "
            "stands for new data.",
            "c": "the labels did not change; only the overlap between training and test did.",
        },
    ),
    "1.7": Question(
        "You min-max scale a numeric feature. Where do you fit the scaler?",
        {
            "a": "on the training split only, then apply it to validation and test",
            "b": "on all the data, so that every value lands in [0, 1]",
            "c": "it does not matter: scaling is a monotonic transform",
        },
        "a",
        {
            "a": "the test split stands for data you have not seen; values outside [0, 1] there are what "
            "deployment sees.",
            "b": "fitting on the test split leaks its minimum and maximum into training: a (small) test-set leak.",
            "c": "the transform itself depends on the data it was fitted on, which is what leaks.",
        },
    ),
}
