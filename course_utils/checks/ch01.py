"""Self-checks of chapter 01's exercises (data preparation)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn.preprocessing import MinMaxScaler

from ..cleaning import PII_PATTERNS
from ..dataprep import jaccard
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_redact_emails", "check_shingle_jaccard", "check_minmax_train_only", "check_random_swap",
           "check_group_split"]

# (text, what it tests, outputs accepted besides PII_PATTERNS["EMAIL"]'s). Handles come first, so that a pattern
# that eats them is told so. ".@name" (Twitter's public reply) stays a handle for the course's pattern, whose local
# part neither starts nor ends with "."; the exercise only says "letters, digits, . + % -", so a local part "." is
# accepted too.
_HANDLES, _ADDRESSES, _OTHER = "handles", "addresses", "other"
EMAIL_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("RT @someone: hi", _HANDLES, ()), ("RT@someone: loved it", _HANDLES, ()),
    ("thanks .@someone: great tip", _HANDLES, ("thanks [EMAIL]: great tip",)),
    ("@someone said hi", _HANDLES, ()), ("cc @some_one_99 and @x.", _HANDLES, ()),
    ("write to ana.lopez+news@mail.example.org today", _ADDRESSES, ()),
    ("first.last+tag@dept.uni.example.ac.uk wrote", _ADDRESSES, ()), ("mail karleem@anonymous now", _ADDRESSES, ()),
    ("two: a@b.co and c.d@e.io.", _ADDRESSES, ()),
    ("no address here", _OTHER, ()), ("price $19.99 at 10:30", _OTHER, ()), ("a lone @ sign", _OTHER, ())]
_EMAIL_HINTS = {
    _HANDLES: "leave handles alone: @name after a space or at the start, RT@name (a retweet) and .@name are not "
              "e-mail addresses",
    _ADDRESSES: "replace the whole address: a local part of letters, digits and . + % -, @, and a domain with any "
                "number of dots (subdomains) or none (name@anonymous), but not a sentence's final '.'",
    _OTHER: "text without an e-mail address must come back unchanged"}


def check_redact_emails(fn: Callable) -> None:
    """Exercise 1.1: e-mail addresses become [EMAIL], nothing else changes; handles and retweets stay."""
    for text, kind, also in EMAIL_CASES:
        expected = PII_PATTERNS["EMAIL"].sub("[EMAIL]", text)
        got = _call("1.1", fn, text)
        assert got == expected or got in also, (
            f"Exercise 1.1: for {text!r} expected {expected!r}, got {got!r}; {_EMAIL_HINTS[kind]}")
    _passed("1.1", len(EMAIL_CASES))


def check_shingle_jaccard(fn: Callable) -> None:
    """Exercise 1.2: Jaccard similarity of character k-gram sets of normalised text."""
    pairs = [("A gorgeous, witty movie.", "a gorgeous witty movie"), ("Unwatchable.", "Unwatchable!"),
             ("The best film of the year", "The worst film of the year"), ("abc", "xyz"), ("same", "same")]
    for a, b in pairs:
        for k in (3, 5):
            expected, got = jaccard(a, b, k), float(_call("1.2", fn, a, b, k))
            assert abs(got - expected) < 1e-9, (
                f"Exercise 1.2: jaccard({a!r}, {b!r}, k={k}) expected {expected:.4f}, got {got:.4f}; normalise "
                "with data.normalise first, then |A & B| / |A | B| of the k-gram sets")
    _passed("1.2", 2 * len(pairs))


def check_minmax_train_only(fn: Callable) -> None:
    """Exercise 1.3: min-max scale test values with the training split's minimum and maximum."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        train, test = rng.normal(0, 2, 50), rng.normal(0.5, 2.5, 20)
        expected = MinMaxScaler().fit(train.reshape(-1, 1)).transform(test.reshape(-1, 1)).ravel()
        got = np.asarray(_call("1.3", fn, pd.Series(train), pd.Series(test)), dtype=float)
        assert got.shape == expected.shape and np.allclose(got, expected), (
            "Exercise 1.3: scale with the TRAINING min and max only; test values may fall outside [0, 1]")
    _passed("1.3", 3)


def _swaps_needed(before: list[str], after: list[str]) -> int:
    """The fewest swaps turning `before` (distinct words) into `after`: len minus the permutation's cycles."""
    where = {word: i for i, word in enumerate(before)}
    perm, seen, cycles = [where[word] for word in after], set(), 0
    for start in range(len(perm)):
        if start not in seen:
            cycles += 1
            i = start
            while i not in seen:
                seen.add(i)
                i = perm[i]
    return len(perm) - cycles


def check_random_swap(fn: Callable) -> None:
    """Exercise 1.4: EDA's random swap: n swaps of two words each, drawn from the given rng, reproducible.

    Whatever rng call picks the two positions (rng.choice, rng.integers, rng.permutation), the result must hold the
    same words and be undone by at most n swaps (so at most 2n words move); n=1 must move words in most seeds, the
    seed must matter, and n=3 must sometimes move more than two words.
    """
    text = "the quiet american is a handsome and intelligent film"  # distinct words: a word's move is visible
    words, seeds = text.split(), range(8)

    def swapped(n: int, seed: int) -> tuple[str, int]:
        """The learner's sentence for (n, seed), checked for words, reproducibility and swap count; and words moved."""
        a = _call("1.4", fn, text, np.random.default_rng(seed), n)
        b = fn(text, np.random.default_rng(seed), n)
        assert sorted(a.split()) == sorted(words), (
            f"Exercise 1.4: n={n} gave {a!r}; a swap must keep exactly the same words")
        assert a == b, "Exercise 1.4: use only the rng you are given, so the same seed gives the same result"
        moved = sum(x != y for x, y in zip(words, a.split()))
        assert n or a == text, f"Exercise 1.4: n=0 gave {a!r}; n=0 should leave the text as it is"
        assert _swaps_needed(words, a.split()) <= n, (
            f"Exercise 1.4: n={n} gave {a!r}: {moved} words moved, more than {n} swaps can do; exchange two words "
            "in place n times, do not sort, reverse or shuffle the sentence")
        return a, moved

    one_swap = [swapped(1, seed)[0] for seed in seeds]
    assert sum(a != text for a in one_swap) > len(seeds) // 2, (
        "Exercise 1.4: n=1 should change the order: swap two different words")
    assert len(set(one_swap)) > 1, (
        "Exercise 1.4: n=1 gives the same sentence for every seed; draw the two positions from the rng")
    for seed in seeds:
        swapped(2, seed)
    assert max(swapped(3, seed)[1] for seed in seeds) > 2, (
        f"Exercise 1.4: n=3 never moved more than two words in {len(seeds)} seeds; swap n times, not once")
    for seed in seeds[:2]:
        swapped(0, seed)
    try:
        single = fn("one", np.random.default_rng(0), 2)
    except Exception as err:  # e.g. rng.choice(1, size=2, replace=False) raises ValueError
        raise AssertionError(f"Exercise 1.4: a one-word text raised {type(err).__name__}; a one-word text has "
                             "nothing to swap, return it as it is") from None
    assert single == "one", "Exercise 1.4: a one-word text has nothing to swap, return it as it is"
    _passed("1.4", 3 * len(seeds) + 3)


def check_group_split(fn: Callable) -> None:
    """Exercise 1.5: no group on both sides, about the asked test share, reproducible."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"text": [f"s{i}" for i in range(300)], "label": rng.integers(0, 2, 300),
                          "movie_name": rng.choice([f"m{i}" for i in range(40)], 300)})
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
        {"a": "the extra rows taught the model more about sentiment",
         "b": "part of the test set now measures memory of sentences seen in training",
         "c": "duplicates reduce label noise, so the model is genuinely better"},
        "b",
        {"a": "the rise is concentrated on the twinned test rows: accuracy on sentences without a twin barely moves.",
         "b": "a test sentence with a near-copy in training is answered from memory; it no longer stands for new data.",
         "c": "the labels did not change; only the overlap between training and test did."}),
    "1.7": Question(
        "You min-max scale a numeric feature. Where do you fit the scaler?",
        {"a": "on the training split only, then apply it to validation and test",
         "b": "on all the data, so that every value lands in [0, 1]",
         "c": "it does not matter: scaling is a monotonic transform"},
        "a",
        {"a": "the test split stands for data you have not seen; values outside [0, 1] there are what deployment sees.",
         "b": "fitting on the test split leaks its minimum and maximum into training: a (small) test-set leak.",
         "c": "the transform itself depends on the data it was fitted on, which is what leaks."}),
}
