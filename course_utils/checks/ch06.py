"""Self-checks of chapter 06's exercises (robustness: calibration and distribution shift)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import calibration
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_ece", "check_temperature"]

NONE = "not done yet; your function returned None: return a float"
POSITIVE_CLASS = (
    "use the top-label confidence probs.max(axis=1) and correctness probs.argmax(axis=1) == labels, "
    "not the positive-class probability probs[:, 1]"
)
UNWEIGHTED = "weight each bin's gap by its share of the examples (count / N), not a plain mean over the bins"
NO_ABS = "take |accuracy - confidence| in each bin: signed gaps of over- and underconfident bins cancel"
GLOBAL_ACCURACY = "compare each bin's mean confidence with the accuracy IN THAT BIN, not over all examples"
LAST_BIN = "a confidence of exactly 1.0 belongs in the last bin (bins are (lower, upper], the first one [0, upper])"
NOT_POSITIVE = "T must be a finite number > 0: optimise log T, or keep the search range above 0"
NO_SCALING = (
    "T = 1 is no scaling at all; accuracy does not depend on T (dividing logits by T > 0 keeps the argmax), "
    "so choose the T that minimises the validation NLL"
)
INVERSE = "you returned 1/T: the calibrated probabilities are softmax(logits / T), so divide the logits by T"
NOT_NLL = "choose T by minimising the validation NLL, not accuracy: accuracy does not depend on T"

NLL_TOLERANCE = 1e-3  # a temperature passes when its NLL is within this of the optimum's


def _sampled_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One label per row drawn from that row's class probabilities."""
    return (rng.random(len(probs))[:, None] > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=probs.shape[1] - 1)


def _ece_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded (probs, labels) cases: over- and underconfident models, 2 to 4 classes, and saturated confidences."""
    rng = np.random.default_rng(61)
    cases = []
    for n, classes, scale in ((300, 2, 2.5), (200, 3, 0.6), (500, 4, 1.8)):
        z = rng.normal(0, 1.5, (n, classes))
        cases.append((calibration.softmax(scale * z), _sampled_labels(rng, calibration.softmax(z))))
    probs, labels = cases[0][0].copy(), cases[0][1].copy()
    probs[:40] = np.eye(2)[labels[:40]]  # 40 confidences of exactly 1.0, 30 of them right and 10 wrong
    labels[30:40] = 1 - labels[30:40]
    cases.append((probs, labels))
    return cases


def _bins(confidence: np.ndarray, outcome: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean confidence and mean outcome of each non-empty equal-width bin ((lower, upper], 0 in the first)."""
    ids = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], confidence)
    count = np.bincount(ids, minlength=bins)
    keep = count > 0
    conf = np.bincount(ids, weights=confidence, minlength=bins)[keep] / count[keep]
    return count[keep], conf, np.bincount(ids, weights=outcome, minlength=bins)[keep] / count[keep]


def _typical_mistakes(probs: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, list[float]]:
    """What each typical wrong ECE gives on one case, keyed by its hint."""
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    count, conf, acc = _bins(confidence, correct, bins)
    weights = count / count.sum()
    signed = float(correct.mean() - confidence.mean())  # sum of count/N x (accuracy - confidence)
    below = confidence < 1.0  # the examples a [lower, upper) bin test keeps
    kept_count, kept_conf, kept_acc = _bins(confidence[below], correct[below], bins)
    kept_gaps = kept_count * np.abs(kept_acc - kept_conf)
    mistakes = {
        POSITIVE_CLASS: [
            float(np.sum(w / w.sum() * np.abs(a - c)))
            for w, c, a in (_bins(probs[:, 1], (labels == 1).astype(float), bins), _bins(probs[:, 1], correct, bins))
        ],
        UNWEIGHTED: [float(np.mean(np.abs(acc - conf))), float(np.sum(np.abs(acc - conf)) / bins)],
        NO_ABS: [signed, -signed, abs(signed)],
        GLOBAL_ACCURACY: [float(np.sum(weights * np.abs(correct.mean() - conf)))],
    }
    if not below.all():  # the 1.0 confidences left out, weighted by N or by the examples left
        mistakes[LAST_BIN] = [float(kept_gaps.sum() / len(probs)), float(kept_gaps.sum() / max(kept_count.sum(), 1))]
    return mistakes


def check_ece(fn: Callable) -> None:
    """Exercise 6.1: `fn(probs, labels, bins)` -> top-label expected calibration error with equal-width bins."""
    bins = 10
    cases = _ece_cases()
    for i, (probs, labels) in enumerate(cases):
        got = _call("6.1", fn, probs.copy(), labels.copy(), bins)
        if got is None:
            raise AssertionError(f"Exercise 6.1: {NONE}")
        got = float(got)
        expected = calibration.expected_calibration_error(probs, labels, bins)
        if math.isclose(got, expected, abs_tol=1e-6):
            continue
        for hint, values in _typical_mistakes(probs, labels, bins).items():
            if any(math.isclose(got, value, abs_tol=1e-6) for value in values):
                raise AssertionError(f"Exercise 6.1: {hint}")
        raise AssertionError(
            f"Exercise 6.1: case {i} ({len(probs)} examples, {probs.shape[1]} classes, {bins} bins): "
            f"expected {expected:.6f}, got {got:.6f}"
        )
    _passed("6.1", len(cases))


def _temperature_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded validation sets (logits, labels): one underconfident model (T about 0.6), two overconfident ones."""
    rng = np.random.default_rng(62)
    cases = []
    for n, classes, scale in ((600, 3, 0.6), (600, 2, 2.5), (800, 4, 1.8)):
        z = rng.normal(0, 1.5, (n, classes))
        cases.append((scale * z, _sampled_labels(rng, calibration.softmax(z))))
    return cases


def _nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Validation NLL of softmax(logits / temperature)."""
    return calibration.nll(calibration.softmax(logits, temperature), labels)


def check_temperature(fn: Callable) -> None:
    """Exercise 6.2: `fn(logits, labels)` -> the temperature T > 0 that minimises the NLL of softmax(logits / T)."""
    cases = _temperature_cases()
    for logits, labels in cases:
        got = _call("6.2", fn, logits.copy(), labels.copy())
        if got is None:
            raise AssertionError(f"Exercise 6.2: {NONE}")
        t = float(got)
        if not (math.isfinite(t) and t > 0):
            raise AssertionError(f"Exercise 6.2: got T = {t}; {NOT_POSITIVE}")
        best_t = calibration.fit_temperature(logits, labels)
        best, mine = _nll_at(logits, labels, best_t), _nll_at(logits, labels, t)
        if mine <= best + NLL_TOLERANCE:
            continue
        if math.isclose(t, 1.0, abs_tol=1e-9):
            raise AssertionError(f"Exercise 6.2: {NO_SCALING}")
        if _nll_at(logits, labels, 1 / t) <= best + NLL_TOLERANCE:
            raise AssertionError(f"Exercise 6.2: {INVERSE}")
        raise AssertionError(
            f"Exercise 6.2: T = {t:.3f} gives NLL {mine:.4f}, the best T = {best_t:.3f} gives {best:.4f}; {NOT_NLL}"
        )
    _passed("6.2", len(cases))


QUESTIONS = {
    "6.3": Question(
        "A typo corrector in front of the model cuts the success rate of a typo attack crafted against the bare "
        "model from 80% to 10%. What does that show about the defended system's robustness?",
        {
            "a": "it is robust to typo attacks",
            "b": "nothing yet: an attack that queries the corrector-plus-model pipeline (an adaptive attack) must be "
            "run before claiming robustness",
            "c": "the corrector made the model more accurate on clean text",
            "d": "the attack was too weak for any model",
        },
        "b",
        {
            "a": "the attack was crafted against the bare model, not the pipeline; an attacker who queries the "
            "corrector picks typos it does not fix, so 10% measures how well it undoes THIS attack's edits only.",
            "b": "robustness is claimed against the strongest attack run on the whole system; attacks transferred from "
            "the undefended model overstate it, as adaptive attacks showed for many published defences (Athalye et "
            "al. 2018; Tramer et al. 2020).",
            "c": "both numbers are about attacked inputs; clean accuracy was not measured, and a corrector can even "
            "lower it by 'fixing' rare words and names.",
            "d": "the same attack succeeded 80% of the time against the model it was crafted for; what changed is the "
            "target, not the attack's strength.",
        },
    ),
    "6.4": Question(
        "A movie-review model loses 20 accuracy points on tweets. With 200 labelled tweets, which is usually best?",
        {
            "a": "train a new model on the 200 tweets from the pretrained encoder",
            "b": "fine-tune the movie model on the 200 tweets (transfer)",
            "c": "raise the softmax temperature",
            "d": "nothing: 200 examples are too few to matter",
        },
        "b",
        {
            "a": "starting again from the encoder throws away the sentiment the movie model already learned from many "
            "more examples; with only 200 tweets, starting from the movie model usually does better (chapter 06 "
            "measured 0.89 against 0.74 on tweets; the two starts drew level only at 500).",
            "b": "the movie model already maps text to sentiment; a few hundred in-domain examples adapt it to tweets' "
            "words and style (measure on held-out tweets, and check the movie accuracy for forgetting).",
            "c": "temperature changes the confidence, never the argmax: accuracy on tweets stays exactly the same.",
            "d": "a few hundred labelled in-domain examples often recover much of a domain gap when used to fine-tune; "
            "measure it on held-out tweets before giving up.",
        },
    ),
}
