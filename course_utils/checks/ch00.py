"""Self-checks of chapter 00's exercises (fine-tuning)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from ..evaluation import confident_errors
from ._common import Question, _call, _passed

__all__ = [
    "QUESTIONS",
    "check_token_lengths",
    "check_logits_to_labels",
    "check_macro_f1",
    "check_mcnemar",
    "check_confident_errors",
]

SAMPLE_TEXTS = [
    "A gorgeous, witty, seductive movie.",
    "Unwatchable.",
    "The Rock is destined to be the 21st Century's new ''Conan''.",
    "",
    "ok " * 80,
]


def check_token_lengths(fn: Callable, tokenizer) -> None:
    """Exercise 0.1: token counts per text, with [CLS] and [SEP], no truncation."""
    expected = [len(ids) for ids in tokenizer(SAMPLE_TEXTS, truncation=False)["input_ids"]]
    got = _call("0.1", fn, tokenizer, SAMPLE_TEXTS)
    assert list(map(int, got)) == expected, (
        f"Exercise 0.1: expected {expected}, got {list(got)}; count special tokens and do not truncate"
    )
    _passed("0.1", len(SAMPLE_TEXTS))


def check_logits_to_labels(fn: Callable) -> None:
    """Exercise 0.2: class ids from (batch, num_labels) logits, ValueError for other shapes."""
    gen = torch.Generator().manual_seed(0)
    for batch, labels in [(8, 2), (5, 3), (1, 2)]:
        logits = torch.randn(batch, labels, generator=gen)
        got = torch.as_tensor(_call("0.2", fn, logits))
        assert got.shape == (batch,) and torch.equal(got, logits.argmax(dim=-1)), (
            f"Exercise 0.2: wrong labels for logits of shape {(batch, labels)}; take the argmax over the "
            "label dimension (the last one)"
        )
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
    known = {
        "that is the accuracy, which equals micro-averaged F1 here; compute F1 per class and average the two": float(
            np.mean(np.asarray(y_true) == np.asarray(y_pred))
        ),
        "that is the F1 of class 1 only; average the F1 of class 0 and of class 1": f1_score(
            y_true, y_pred, average="binary", pos_label=1, zero_division=0
        ),
        "that is weighted by how many rows each class has; macro F1 is the plain mean of the two": f1_score(
            y_true, y_pred, average="weighted", labels=[0, 1], zero_division=0
        ),
    }
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
    cases = [
        ([0, 1, 1, 0, 1], [0, 1, 0, 0, 1]),
        ([1, 1, 1, 1], [1, 1, 1, 1]),
        ([0, 0, 0], [0, 0, 0]),
        ([0, 0, 1, 1], [1, 1, 1, 1]),
        ([1, 1, 1, 1], [0, 0, 0, 0]),
    ]
    cases += [(rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 50).tolist()) for _ in range(3)]
    cases += [((rng.uniform(size=40) < 0.2).astype(int).tolist(), rng.integers(0, 2, 40).tolist())]  # imbalanced
    for y_true, y_pred in cases:
        ref = f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=0)
        accepted = {
            ref,
            f1_score(y_true, y_pred, average="macro", zero_division=0),  # sklearn's defaults
            f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=1),
        }
        try:
            got = float(_call("0.3", fn, list(y_true), list(y_pred)))
        except ZeroDivisionError:
            raise AssertionError(
                f"Exercise 0.3: y_true={y_true[:6]}..., y_pred={y_pred[:6]}... raised "
                "ZeroDivisionError; a 0/0 precision, recall or F1 counts as 0"
            ) from None
        assert any(abs(got - value) < 1e-9 for value in accepted), (
            f"Exercise 0.3: for y_true={y_true[:6]}..., y_pred={y_pred[:6]}... expected "
            f"{' or '.join(f'{v:.4f}' for v in sorted(accepted))}, got {got:.4f}; "
            + _macro_f1_hint(y_true, y_pred, got)
        )
    _passed("0.3", len(cases))


def _discordant(y_true, pred_a, pred_b) -> tuple[int, int]:
    """(b, c): sentences only model A gets right, and only model B gets right."""
    right_a, right_b = np.asarray(pred_a) == np.asarray(y_true), np.asarray(pred_b) == np.asarray(y_true)
    return int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))


def mcnemar_exact(y_true, pred_a, pred_b) -> float:
    """The exact two-sided McNemar test (scipy's binomial test on the discordant pairs); 1.0 when there are none."""
    b, c = _discordant(y_true, pred_a, pred_b)
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def _mcnemar_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Paired predictions with few and many disagreements, equal and lopsided, none at all, and 3 classes."""
    rng = np.random.default_rng(4)
    cases = []
    for n, flip_a, flip_b in [(40, 0.1, 0.3), (300, 0.15, 0.2), (1000, 0.2, 0.2), (25, 0.0, 0.0), (60, 0.4, 0.05)]:
        y = rng.integers(0, 2, n)
        a = np.where(rng.uniform(size=n) < flip_a, 1 - y, y)
        b = np.where(rng.uniform(size=n) < flip_b, 1 - y, y)
        cases.append((y, a, b))
    y = rng.integers(0, 3, 80)
    cases.append(
        (y, np.where(rng.uniform(size=80) < 0.2, (y + 1) % 3, y), np.where(rng.uniform(size=80) < 0.3, (y + 2) % 3, y))
    )
    return cases


def check_mcnemar(fn: Callable) -> None:
    """Exercise 0.4: the exact McNemar test of two classifiers on the same test sentences."""
    cases = _mcnemar_cases()
    for y, a, b in cases:
        expected = mcnemar_exact(y, a, b)
        got = float(_call("0.4", fn, y.copy(), a.copy(), b.copy()))
        nb, nc = _discordant(y, a, b)
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
            continue
        n = len(y)
        if nb + nc and math.isclose(got, binomtest(nb, n, 0.5).pvalue, rel_tol=1e-6):
            hint = "count only the sentences where exactly one model is right; agreements carry no evidence"
        elif (
            nb + nc
            and math.isclose(got, binomtest(nb, nb + nc, 0.5, alternative="greater").pvalue, rel_tol=1e-6)
            or nb + nc
            and math.isclose(got, binomtest(nb, nb + nc, 0.5, alternative="less").pvalue, rel_tol=1e-6)
        ):
            hint = "test two-sided: either model could be the better one"
        else:
            hint = (
                "under 'no difference' each of the b + c discordant sentences is equally likely to favour A or B: "
                "p is the two-sided binomial test of b in b + c at 1/2 (exact, not the chi-square "
                "approximation); 1.0 when the models never disagree"
            )
        raise AssertionError(
            f"Exercise 0.4: {n} sentences, b={nb} (only A right), c={nc} (only B right): expected "
            f"p={expected:.4g}, got {got:.4g}; {hint}"
        )
    _passed("0.4", len(cases))


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
            "differs from the label, sort by the max probability, highest first"
        )
    _passed("0.5", 3)


QUESTIONS = {
    "0.6": Question(
        "The seed evaluates a sentence classifier with `outputs.logits.argmax(dim=2)`. Why does it fail?",
        {
            "a": "sentence-classification logits are (batch, num_labels): there is no dimension 2",
            "b": "argmax needs probabilities, so softmax must come first",
            "c": "dimension 2 holds the tokens, which must be pooled before the argmax",
        },
        "a",
        {
            "a": "Token-tagging logits are (batch, seq_len, num_labels); a sentence classifier's have no "
            "sequence axis.",
            "b": "softmax is monotonic: the argmax of the logits and of the probabilities is the same.",
            "c": "the model already pooled the tokens (the pooler over [CLS]); its logits have no token axis left.",
        },
    ),
    "0.7": Question(
        "Validation accuracy picked the best of two epochs. Which number do you report as the model's accuracy?",
        {
            "a": "the best validation accuracy",
            "b": "the test accuracy of the checkpoint chosen on validation",
            "c": "the best test accuracy over the two epochs",
        },
        "b",
        {
            "a": "it was used to choose the checkpoint, so it is biased upwards: a choice made on a set overfits it.",
            "b": "the test split played no part in any choice, so it estimates accuracy on new sentences.",
            "c": "choosing the epoch by its test accuracy turns the test split into a validation split: optimistic.",
        },
    ),
}
