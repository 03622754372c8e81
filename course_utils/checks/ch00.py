"""Self-checks of chapter 00's exercises (fine-tuning)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from ..evaluation import confident_errors, rank_items
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_token_lengths", "check_logits_to_labels", "check_macro_f1", "check_recommend",
           "check_confident_errors"]

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


def _macro_f1_hint(y_true, y_pred, got: float) -> str:
    """Name the usual mix-up behind a wrong macro F1: accuracy (= micro F1), class 1 only, weighting, 0/0."""
    if math.isnan(got):
        return "a 0/0 precision or recall gave nan; count it as 0"
    known = {"that is the accuracy, which equals micro-averaged F1 here; compute F1 per class and average the two":
             float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
             "that is the F1 of class 1 only; average the F1 of class 0 and of class 1":
             f1_score(y_true, y_pred, average="binary", pos_label=1, zero_division=0),
             "that is weighted by how many rows each class has; macro F1 is the plain mean of the two":
             f1_score(y_true, y_pred, average="weighted", labels=[0, 1], zero_division=0)}
    for hint, value in known.items():
        if abs(got - value) < 1e-9:
            return hint
    return "average the per-class F1 of both classes, F1 = 2PR / (P + R), and 0 when P + R = 0"


def check_macro_f1(fn: Callable) -> None:
    """Exercise 0.3: macro F1 by hand, compared with scikit-learn.

    The exercise's convention is scikit-learn's f1_score(average="macro", labels=[0, 1], zero_division=0): a class
    absent from both y_true and y_pred scores F1 0. scikit-learn's defaults leave such a class out of the mean (and
    zero_division=1 scores it 1), which gives 1.0 instead of 0.5 when every row is one class predicted right; both
    readings are accepted. Everywhere else all of them agree.
    """
    rng = np.random.default_rng(0)
    cases = [([0, 1, 1, 0, 1], [0, 1, 0, 0, 1]), ([1, 1, 1, 1], [1, 1, 1, 1]), ([0, 0, 0], [0, 0, 0]),
             ([0, 0, 1, 1], [1, 1, 1, 1]), ([1, 1, 1, 1], [0, 0, 0, 0])]
    cases += [(rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50).tolist()) for _ in range(3)]
    cases += [((rng.uniform(size=40) < 0.2).astype(int).tolist(), rng.integers(0, 2, 40).tolist())]  # imbalanced
    for y_true, y_pred in cases:
        ref = f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=0)
        accepted = {ref, f1_score(y_true, y_pred, average="macro", zero_division=0),  # sklearn's defaults
                    f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=1)}
        try:
            got = float(_call("0.3", fn, list(y_true), list(y_pred)))
        except ZeroDivisionError:
            raise AssertionError(f"Exercise 0.3: y_true={y_true[:6]}..., y_pred={y_pred[:6]}... raised "
                                 "ZeroDivisionError; a 0/0 precision, recall or F1 counts as 0") from None
        assert any(abs(got - value) < 1e-9 for value in accepted), (
            f"Exercise 0.3: for y_true={y_true[:6]}..., y_pred={y_pred[:6]}... expected "
            f"{' or '.join(f'{v:.4f}' for v in sorted(accepted))}, got {got:.4f}; "
            + _macro_f1_hint(y_true, y_pred, got))
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


QUESTIONS = {
    "0.6": Question(
        "The seed evaluates a sentence classifier with `outputs.logits.argmax(dim=2)`. Why does it fail?",
        {"a": "sentence-classification logits are (batch, num_labels): there is no dimension 2",
         "b": "argmax needs probabilities, so softmax must come first",
         "c": "dimension 2 holds the tokens, which must be pooled before the argmax"},
        "a",
        {"a": "Token-tagging logits are (batch, seq_len, num_labels); a sentence classifier's have no sequence axis.",
         "b": "softmax is monotonic: the argmax of the logits and of the probabilities is the same.",
         "c": "the model already pooled the tokens (the pooler over [CLS]); its logits have no token axis left."}),
    "0.7": Question(
        "Validation accuracy picked the best of two epochs. Which number do you report as the model's accuracy?",
        {"a": "the best validation accuracy", "b": "the test accuracy of the checkpoint chosen on validation",
         "c": "the best test accuracy over the two epochs"},
        "b",
        {"a": "it was used to choose the checkpoint, so it is biased upwards: a choice made on a set overfits it.",
         "b": "the test split played no part in any choice, so it estimates accuracy on new sentences.",
         "c": "choosing the epoch by its test accuracy turns the test split into a validation split: optimistic."}),
}
