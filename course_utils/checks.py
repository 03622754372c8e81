"""Self-checks that exercise notebooks call on the learner's functions (introduced in chapter 00).

Each check runs the learner's function on a few cases, compares it with the course's reference (the
`course_utils` function or scikit-learn) and prints one line when all pass. An unfinished stub
(NotImplementedError) or a wrong answer raises AssertionError with a hint.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch


def _call(exercise: str, fn: Callable, *args, **kwargs):
    """Call the learner's function, turning an unfinished stub into a clear failure."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"Exercise {exercise}: not done yet; replace the `raise NotImplementedError` "
                             "line with your code") from None


def _passed(exercise: str, cases: int) -> None:
    """The one line a learner sees when an exercise is right."""
    print(f"Exercise {exercise}: passed ({cases} cases)")


def cmp(name: str, mine, reference, atol: float = 1e-6) -> bool:
    """Print whether two arrays are exact, approximately equal, or how far apart (nn-zero-to-hero style)."""
    a, b = np.asarray(mine, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        print(f"{name:24s} shape {a.shape} != {b.shape}")
        return False
    exact, close = bool(np.array_equal(a, b)), bool(np.allclose(a, b, atol=atol))
    print(f"{name:24s} exact: {exact!s:5} approximate: {close!s:5} maxdiff: {np.abs(a - b).max(initial=0):.2e}")
    return close


SAMPLE_TEXTS = ["A gorgeous, witty, seductive movie.", "Unwatchable.",
                "The Rock is destined to be the 21st Century's new ''Conan''.", "", "ok " * 80]


def check_token_lengths(fn: Callable, tokenizer) -> None:
    """Exercise 0.1: token counts per text, with [CLS] and [SEP], no truncation."""
    expected = [len(ids) for ids in tokenizer(SAMPLE_TEXTS, truncation=False)["input_ids"]]
    got = _call("0.1", fn, tokenizer, SAMPLE_TEXTS)
    assert list(map(int, got)) == expected, (
        f"Exercise 0.1: expected {expected}, got {list(got)}; count special tokens and do not truncate")
    _passed("0.1", len(SAMPLE_TEXTS))


def check_logits_to_labels(fn: Callable) -> None:
    """Exercise 0.2: class ids from (batch, num_labels) logits, ValueError for other shapes."""
    gen = torch.Generator().manual_seed(0)
    for batch, labels in [(8, 2), (5, 3), (1, 2)]:
        logits = torch.randn(batch, labels, generator=gen)
        got = torch.as_tensor(_call("0.2", fn, logits))
        assert got.shape == (batch,) and torch.equal(got, logits.argmax(dim=-1)), (
            f"Exercise 0.2: wrong labels for logits of shape {(batch, labels)}; take the argmax over the "
            "label dimension (the last one)")
    try:
        fn(torch.randn(2, 4, 3))
    except ValueError:
        pass
    else:
        raise AssertionError("Exercise 0.2: 3-D logits (batch, seq, labels) should raise ValueError")
    _passed("0.2", 4)


def check_macro_f1(fn: Callable) -> None:
    """Exercise 0.3: macro F1 by hand, compared with scikit-learn."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    cases = [([0, 1, 1, 0, 1], [0, 1, 0, 0, 1]), ([1, 1, 1, 1], [1, 1, 1, 1]), ([0, 0, 1, 1], [1, 1, 1, 1])]
    cases += [(rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50).tolist()) for _ in range(3)]
    for y_true, y_pred in cases:
        ref = f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=0)
        got = float(_call("0.3", fn, y_true, y_pred))
        assert abs(got - ref) < 1e-9, (
            f"Exercise 0.3: for y_true={y_true[:6]}... expected {ref:.4f}, got {got:.4f}; average the per-class "
            "F1 of both classes, counting a class with no true or predicted rows as F1 0")
    _passed("0.3", len(cases))


def _score_frame() -> pd.DataFrame:
    """A small frame of (movie, p_positive) rows with ties and rare movies."""
    rng = np.random.default_rng(1)
    movies = [f"movie {c}" for c in "ABCDEFGH"]
    counts = [6, 5, 2, 8, 5, 7, 1, 5]
    rows = [(m, round(float(rng.uniform()), 1)) for m, n in zip(movies, counts) for _ in range(n)]
    rows += [("movie I", 0.9)] * 5 + [("movie J", 0.9)] * 5
    return pd.DataFrame(rows, columns=["movie_name", "p_positive"])


def check_recommend(fn: Callable) -> None:
    """Exercise 0.4: rank movies by mean positive probability, with a minimum review count."""
    from .evaluation import rank_items

    frame = _score_frame()
    for min_count, k in [(5, 3), (1, 10), (6, 2)]:
        expected = rank_items(frame, min_count=min_count, k=k)["movie_name"].tolist()
        got = list(_call("0.4", fn, frame.copy(), min_count, k))
        assert got == expected, (
            f"Exercise 0.4: min_count={min_count}, k={k}: expected {expected}, got {got}; drop movies with "
            "fewer reviews, sort by mean score (high first), break ties by name")
    _passed("0.4", 3)


def check_confident_errors(fn: Callable) -> None:
    """Exercise 0.5: the k most confident mistakes, most confident first."""
    from .evaluation import confident_errors

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"text": [f"s{i}" for i in range(40)], "label": rng.integers(0, 2, 40)})
    p1 = rng.uniform(size=40)
    probs = np.stack([1 - p1, p1], axis=1)
    for k in (1, 5, 40):
        expected = confident_errors(frame, probs, k)["text"].tolist()
        got = list(_call("0.5", fn, frame.copy(), probs.copy(), k))
        assert got == expected, (
            f"Exercise 0.5: k={k}: expected {expected[:5]}..., got {got[:5]}...; keep rows where the argmax "
            "differs from the label, sort by the max probability, highest first")
    _passed("0.5", 3)
