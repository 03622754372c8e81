"""Self-checks of chapter 05's exercises (explainability)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_comprehensiveness", "check_integrated_gradients"]

LOWEST = "remove the HIGHEST-scoring words (np.argsort(-scores)): comprehensiveness asks whether the top words mattered"
NO_WORD = "k = ceil(share x n), and at least one word: int(0.01 x 12) removes nothing and scores 0"
NOT_DIFF = "comprehensiveness is p(x) - p(x without the words), not p(x without the words)"
ONE_BIN = "average over all the bins (AOPC), not only the last one"
NO_PATH = "that is gradient x input at x alone: IG averages the gradient along the path from the baseline to x"
NO_DELTA = "multiply the averaged gradient by (x - baseline), not by x"
INCOMPLETE = "the attributions must add up to F(x) - F(baseline) (completeness); check the path and the average"

_WEIGHTS = {"great": 2.0, "moving": 1.2, "dull": -1.8, "not": -0.6, "plot": 0.1, "awful": -2.5, "fun": 1.4}


def toy_predict(texts: list[str]) -> np.ndarray:
    """A bag-of-words classifier (N, 2) the checks can run anywhere: p(positive) = sigmoid(sum of word weights)."""
    scores = np.array([sum(_WEIGHTS.get(w.strip(".,").lower(), 0.0) for w in t.split()) for t in texts])
    p = 1 / (1 + np.exp(-(scores + 0.2)))
    return np.stack([1 - p, p], axis=1)


def comprehensiveness_reference(predict, words, scores, target, bins=(0.01, 0.05, 0.1, 0.2, 0.5)) -> float:
    """ERASER comprehensiveness averaged over the bins: p(x) − p(x without its top ceil(share·n) words)."""
    full = predict([" ".join(words)])[0, target]
    drops = []
    for share in bins:
        top = set(np.argsort(-np.asarray(scores), kind="stable")[: max(1, math.ceil(share * len(words)))].tolist())
        drops.append(full - predict([" ".join(w for i, w in enumerate(words) if i not in top)])[0, target])
    return float(np.mean(drops))


def _comp_cases():
    rng = np.random.default_rng(3)
    sentences = [
        "a great and moving film with a dull plot".split(),
        "not fun at all , an awful and dull mess".split(),
        "the cast is great fun".split(),
        "great".split(),
    ]
    out = []
    for words in sentences:
        weights = np.array([_WEIGHTS.get(w, 0.0) for w in words])
        out.append((words, weights + rng.normal(0, 0.01, len(words)), 1))
        out.append((words, rng.normal(0, 1, len(words)), 0))
    return out


def check_comprehensiveness(fn: Callable) -> None:
    """Exercise 5.1: `fn(predict, words, scores, target, bins)` -> ERASER comprehensiveness (a float)."""
    bins = (0.01, 0.05, 0.1, 0.2, 0.5)
    cases = _comp_cases()
    for words, scores, target in cases:
        got = float(_call("5.1", fn, toy_predict, list(words), np.array(scores), target, bins))
        expected = comprehensiveness_reference(toy_predict, words, scores, target, bins)
        if math.isclose(got, expected, abs_tol=1e-6):
            continue
        lowest = comprehensiveness_reference(toy_predict, words, -np.asarray(scores), target, bins)
        if math.isclose(got, lowest, abs_tol=1e-6):
            raise AssertionError(f"Exercise 5.1: {LOWEST}")
        full = toy_predict([" ".join(words)])[0, target]
        if math.isclose(got, full - expected, abs_tol=1e-6):
            raise AssertionError(f"Exercise 5.1: {NOT_DIFF}")
        last = comprehensiveness_reference(toy_predict, words, scores, target, bins[-1:])
        if math.isclose(got, last, abs_tol=1e-6):
            raise AssertionError(f"Exercise 5.1: {ONE_BIN}")
        floor = _floored(toy_predict, words, scores, target, bins)
        if math.isclose(got, floor, abs_tol=1e-6):
            raise AssertionError(f"Exercise 5.1: {NO_WORD}")
        raise AssertionError(f"Exercise 5.1: for {' '.join(words)!r} expected {expected:.4f}, got {got:.4f}")
    _passed("5.1", len(cases))


def _floored(predict, words, scores, target, bins) -> float:
    """The typical mistake: int(share · n) words, which is none for small shares."""
    full = predict([" ".join(words)])[0, target]
    drops = []
    for share in bins:
        top = set(np.argsort(-np.asarray(scores), kind="stable")[: int(share * len(words))].tolist())
        drops.append(full - predict([" ".join(w for i, w in enumerate(words) if i not in top)])[0, target])
    return float(np.mean(drops))


def _toy_function(seed: int):
    """F(x) = sigmoid(w·x + c·tanh(u·x)), a smooth non-linear function, and its gradient for a batch (S, D)."""
    rng = np.random.default_rng(seed)
    w, u = rng.normal(0, 1, 6), rng.normal(0, 1, 6)

    def f(x):
        z = np.atleast_2d(x) @ w + 1.5 * np.tanh(np.atleast_2d(x) @ u)
        return 1 / (1 + np.exp(-z))

    def grad(points):
        points = np.atleast_2d(points)
        z = points @ w + 1.5 * np.tanh(points @ u)
        s = 1 / (1 + np.exp(-z))
        dz = w[None, :] + 1.5 * (1 - np.tanh(points @ u) ** 2)[:, None] * u[None, :]
        return (s * (1 - s))[:, None] * dz

    return f, grad, rng.normal(0, 1.5, 6)


def check_integrated_gradients(fn: Callable) -> None:
    """Exercise 5.2: `fn(grad, x, baseline, steps)` -> IG attributions (D,) of F at x against the baseline."""
    for seed in range(4):
        f, grad, x = _toy_function(seed)
        baseline = np.zeros_like(x)
        got = np.asarray(_call("5.2", fn, grad, x.copy(), baseline.copy(), 64), dtype=float)
        assert got.shape == x.shape, f"Exercise 5.2: return one attribution per input dimension, shape {x.shape}"
        alphas = (np.arange(4000) + 0.5) / 4000
        exact = grad(baseline + alphas[:, None] * (x - baseline)).mean(0) * (x - baseline)
        gap = float(f(x)[0] - f(baseline)[0])
        if np.allclose(got, exact, atol=0.02 * abs(gap) + 1e-4):
            continue
        if np.allclose(got, grad(x)[0] * x, atol=1e-6):
            raise AssertionError(f"Exercise 5.2: {NO_PATH}")
        raise AssertionError(f"Exercise 5.2: {INCOMPLETE}: sum {got.sum():+.4f}, F(x) - F(baseline) {gap:+.4f}")
    # a baseline that is not zero: x - baseline is what scales the gradient
    f, grad, x = _toy_function(9)
    baseline = np.full_like(x, 0.7)
    got = np.asarray(_call("5.2", fn, grad, x.copy(), baseline.copy(), 64), dtype=float)
    alphas = (np.arange(4000) + 0.5) / 4000
    average = grad(baseline + alphas[:, None] * (x - baseline)).mean(0)
    gap = float(f(x)[0] - f(baseline)[0])
    if np.allclose(got, average * x, atol=1e-3) and not np.allclose(got, average * (x - baseline), atol=1e-3):
        raise AssertionError(f"Exercise 5.2: {NO_DELTA}")
    if not np.allclose(got, average * (x - baseline), atol=0.02 * abs(gap) + 1e-4):
        raise AssertionError(f"Exercise 5.2: {INCOMPLETE}: sum {got.sum():+.4f}, F(x) - F(baseline) {gap:+.4f}")
    _passed("5.2", 5)


QUESTIONS = {
    "5.3": Question(
        "In this chapter, deleting the words with the most last-layer [CLS] attention changed the prediction more "
        "than deleting random words but about half as much as deleting the top Integrated Gradients, LIME or SHAP "
        "words. What follows?",
        {
            "a": "attention maps are useless and bertviz should not be used",
            "b": "for this model, attention weight on a word is a weak measure of the word's influence on the "
            "prediction; attention views show how information is routed, and claims about importance need a test",
            "c": "Integrated Gradients is always the most faithful explainer",
        },
        "b",
        {
            "a": "attention views are good for studying what heads do (routing, syntax), and attention did beat random "
            "here; it is a weaker importance score than the alternatives, not a useless one.",
            "b": "that is the measured claim, and its scope: this model, these sentences, this metric (Jain & Wallace "
            "2019; Wiegreffe & Pinter 2019 show the scope matters).",
            "c": "the result holds for this model and metric, with its spread; LIME and SHAP were as faithful here, "
            "and the ranking can change with the model, the baseline and the removal method.",
        },
    ),
    "5.4": Question(
        "Activation patching copies layer 0's output from the clean sentence ('a great film') into the run on the "
        "corrupted one ('a awful film') and the whole prediction comes back. Why is that expected, and what does it "
        "NOT show?",
        {
            "a": "it shows layer 0 decides the sentiment by itself",
            "b": "after layer 0 every position holds the clean run's vectors, so everything downstream is the clean "
            "computation: it shows the swapped word's information passes through layer 0 (it must), not where it is "
            "used; patching single heads or positions in later layers localises that",
            "c": "it shows the model is broken",
        },
        "b",
        {
            "a": "patching a whole block at every position restores everything downstream of it; it does not say the "
            "block computed the decision.",
            "b": "a patch that covers all of the difference trivially restores it; the informative experiments patch "
            "less (one head, one position) and see how much comes back.",
            "c": "it is the expected result of patching a whole early layer.",
        },
    ),
}
