"""Self-checks of chapter 02's exercises (differential privacy)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score

from ..audit import exposure
from ..privacy import _gaussian_delta, epsilon_after
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_laplace_count", "check_clip_per_example", "check_gaussian_epsilon", "check_attack_auc",
           "check_exposure"]

LAPLACE_DRAWS = 20_000  # per epsilon; the std and mean |noise| then sit within 0.8% (one sd) of their values
# Gaussian noise of the same std sqrt(2)/epsilon has mean |noise| sqrt(2)/epsilon * sqrt(2/pi) = 1.128/epsilon; the
# band +-5% around Laplace's 1/epsilon is 7 sds of Laplace's estimate (sd 0.71%) and 13 of Gaussian's (sd 0.61%).
GAUSSIAN_MAD = 2 / math.sqrt(math.pi)


def check_laplace_count(fn: Callable) -> None:
    """Exercise 2.1: count + Laplace(sensitivity / epsilon) noise from the given rng; epsilon <= 0 refused.

    Checks the mean (the true count), the std (sqrt(2)/epsilon) and the mean absolute deviation (1/epsilon, which
    tells Laplace from Gaussian noise of the same std) of 20,000 draws per epsilon, and that two generators seeded
    alike give the same draws.
    """
    for count, eps in [(120, 1.0), (7, 0.1), (0, 4.0)]:
        rng = np.random.default_rng(0)
        draws = np.array([_call("2.1", fn, count, eps, rng) for _ in range(LAPLACE_DRAWS)], dtype=float)
        assert abs(draws.mean() - count) < 0.05 / eps, (
            f"Exercise 2.1: count={count}, epsilon={eps}: the noisy counts average {draws.mean():.2f}; the noise "
            "must be centred on the true count")
        expected_std = math.sqrt(2) / eps
        assert abs(draws.std() / expected_std - 1) < 0.05, (
            f"Exercise 2.1: epsilon={eps}: noise std {draws.std():.3f}, expected sqrt(2)/epsilon = "
            f"{expected_std:.3f}; use rng.laplace(0, sensitivity / epsilon)")
        mad = float(np.abs(draws - count).mean())
        assert abs(mad * eps - 1) < 0.05, (
            f"Exercise 2.1: epsilon={eps}: mean |noise| {mad:.3f}, expected 1/epsilon = {1 / eps:.3f} for Laplace "
            f"noise (Gaussian noise of the same std gives {GAUSSIAN_MAD / eps:.3f}); draw rng.laplace(0, 1 / epsilon)")
    runs = []
    for _ in range(2):  # two fresh generators with the same seed
        rng = np.random.default_rng(0)
        runs.append([float(fn(50, 0.5, rng)) for _ in range(5)])
    assert runs[0] == runs[1], (
        "Exercise 2.1: two generators made with np.random.default_rng(0) gave different draws; draw the noise from "
        "the rng you are given, not from np.random or a new generator")
    for bad in (0.0, -1.0):
        try:
            fn(10, bad, np.random.default_rng(0))
        except ValueError:
            continue
        except Exception as err:  # e.g. ZeroDivisionError from 1 / 0.0 before any check
            outcome = f"it raised {type(err).__name__}"
        else:
            outcome = "it returned a value"
        raise AssertionError(f"Exercise 2.1: epsilon={bad} should raise ValueError (no finite noise gives 0-DP, "
                             f"and epsilon < 0 is meaningless), but {outcome}; check epsilon > 0 first")
    _passed("2.1", 6)


def check_clip_per_example(fn: Callable) -> None:
    """Exercise 2.2: scale each example's whole gradient (all parameters together) to norm <= C."""
    gen = torch.Generator().manual_seed(0)
    per_sample = {"weight": torch.randn(6, 2, 4, generator=gen) * 3, "bias": torch.randn(6, 2, generator=gen)}
    for clip in (0.5, 2.0, 100.0):
        norms = torch.cat([g.flatten(1) for g in per_sample.values()], dim=1).norm(dim=1)  # (B,)
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        got = _call("2.2", fn, {k: v.clone() for k, v in per_sample.items()}, clip)
        assert set(got) == set(per_sample), f"Exercise 2.2: return a dict with the keys {sorted(per_sample)}"
        for name, g in per_sample.items():
            expected = g * factor.view(-1, *([1] * (g.dim() - 1)))
            assert got[name].shape == g.shape, (
                f"Exercise 2.2: {name} should keep shape {tuple(g.shape)} (one clipped gradient per example), got "
                f"{tuple(got[name].shape)}")
            assert torch.allclose(got[name], expected, atol=1e-5), (
                f"Exercise 2.2: clip={clip}: {name} differs; the norm is over all parameters of one example "
                "together, and the factor is min(1, C / (norm + 1e-6))")
    _passed("2.2", 3)


def _exact_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """The exact epsilon of `steps` Gaussian releases (sensitivity 1, std sigma) at delta: they compose into one
    Gaussian mechanism with std sigma / sqrt(steps), whose delta(epsilon) is Balle & Wang (2018)'s, decreasing."""
    std = sigma / math.sqrt(steps)
    if _gaussian_delta(std, 1.0, 0.0) <= delta:
        return 0.0
    high = 1.0
    while _gaussian_delta(std, 1.0, high) > delta:
        high *= 2
    return float(brentq(lambda eps: _gaussian_delta(std, 1.0, eps) - delta, 0.0, high, xtol=1e-12))


def _mironov_epsilon(sigma: float, steps: int, delta: float, orders=range(2, 257)) -> float:
    """Mironov (2017)'s classic RDP conversion min_alpha steps alpha / (2 sigma^2) + ln(1/delta) / (alpha - 1)."""
    alphas = np.asarray(orders, dtype=float)
    return float((steps * alphas / (2 * sigma ** 2) + math.log(1 / delta) / (alphas - 1)).min())


def check_gaussian_epsilon(fn: Callable) -> None:
    """Exercise 2.3: epsilon of `steps` full-batch Gaussian steps by RDP composition and conversion.

    Any correct accounting is accepted: the exercise's conversion (Balle et al. 2020, as Opacus) over DEFAULT_ORDERS,
    Mironov's classic one, either over another sensible grid of orders or continuous alpha, or the exact epsilon of
    the composed Gaussian mechanism. The answer must lie between the exact epsilon (no accountant can do better)
    and Mironov's conversion over the integer orders 2..256 (the loosest of these), each with 0.1% slack. The cases'
    best orders lie between 2 and 6, inside every sensible grid.
    """
    cases = [(1.0, 1, 1e-5), (4.0, 100, 1e-5), (10.0, 1000, 1e-6), (2.0, 10, 1e-5)]
    for sigma, steps, delta in cases:
        low, high = _exact_gaussian_epsilon(sigma, steps, delta), _mironov_epsilon(sigma, steps, delta)
        expected = epsilon_after(1.0, sigma, steps, delta)
        got = float(_call("2.3", fn, sigma, steps, delta))
        where = f"Exercise 2.3: sigma={sigma}, steps={steps}, delta={delta}: got {got:.4f}"
        assert got >= low * (1 - 1e-3), (
            f"{where}, below the exact epsilon {low:.4f} of {steps} Gaussian releases, which no accountant beats "
            f"(expected {expected:.4f}); RDP adds up over steps (steps * alpha / (2 sigma^2)) and ln(1/delta) counts")
        assert got <= high * (1 + 1e-3), (
            f"{where}, above Mironov's conversion {high:.4f}, the loosest accepted (expected {expected:.4f}); "
            "the RDP of order alpha is steps * alpha / (2 sigma^2), sigma squared: convert each order, take the min")
    _passed("2.3", len(cases))


def check_attack_auc(fn: Callable) -> None:
    """Exercise 2.4: the loss attack's AUC as the share of (member, non-member) pairs it orders correctly."""
    rng = np.random.default_rng(4)
    cases = [(rng.exponential(0.3, 200), rng.exponential(0.5, 150)), (np.array([0.1, 0.2, 0.2]), np.array([0.2, 0.9])),
             (rng.exponential(1.0, 50), rng.exponential(1.0, 60))]
    for members, nonmembers in cases:
        expected = roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(nonmembers))], -np.r_[members, nonmembers])
        got = float(_call("2.4", fn, members.copy(), nonmembers.copy()))
        assert abs(got - expected) < 1e-9, (
            f"Exercise 2.4: expected AUC {expected:.4f}, got {got:.4f}; count pairs where the member's loss is "
            "lower, ties count one half")
    _passed("2.4", 3)


def check_exposure(fn: Callable) -> None:
    """Exercise 2.5: exposure = log2(N) - log2(rank), rank = 1 + how many candidates have a strictly lower loss.

    Distinct losses first, then losses in groups of eight equal values: a canary tied with others shares their best
    rank, 1 + how many are strictly lower, so counting losses <= the canary's is caught.
    """
    rng = np.random.default_rng(5)
    distinct = rng.exponential(1.0, 256)
    tied = rng.permutation(np.repeat(np.arange(32) / 8, 8))  # 32 values, each held by 8 candidates
    cases = [(distinct, i) for i in (int(np.argmin(distinct)), int(np.argmax(distinct)), 17)]
    cases += [(tied, i) for i in (int(np.argmin(tied)), int(np.argmax(tied)), 17)]
    for losses, i in cases:
        expected = exposure(losses[i], losses)
        got = float(_call("2.5", fn, float(losses[i]), losses.copy()))
        ties = int((losses == losses[i]).sum()) - 1
        hint = (f"the canary is tied with {ties} other candidates, which do not count; " if ties else "")
        assert abs(got - expected) < 1e-9, (
            f"Exercise 2.5: expected {expected:.3f} bits, got {got:.3f}; {hint}rank = 1 + how many candidates have "
            "a strictly lower loss, exposure in bits (log2)")
    _passed("2.5", len(cases))


QUESTIONS = {
    "2.6": Question(
        "A model is trained with DP-SGD at (epsilon = 8, delta = 1/(10N)) per sentence. A secret appears in ten "
        "training sentences. What does DP guarantee about the secret?",
        {"a": "epsilon = 8, like every record", "b": "epsilon = 80 with the same delta",
         "c": "nothing useful: ten records together are (80, 10 e^72 delta)-DP, and that delta is far above 1"},
        "c",
        {"a": "DP's unit is one record; a secret written ten times is a group of ten records.",
         "b": "k epsilon holds for pure DP only; with delta > 0 group privacy multiplies delta by k e^((k-1) eps).",
         "c": "group privacy: (k eps, k e^((k-1) eps) delta). At eps = 8 and k = 10 the delta term exceeds 1."}),
    "2.7": Question(
        "A loss-threshold attack on your epsilon = 8 model reaches ROC AUC 0.51. What can you conclude?",
        {"a": "the model is in effect private at a much smaller epsilon",
         "b": "this attack learns little; epsilon = 8 itself allows any attack an AUC up to 0.9997",
         "c": "epsilon = 8 is stricter than needed and can be raised safely"},
        "b",
        {"a": "an attack gives a lower bound on leakage, never an upper one: a stronger attack may do better.",
         "b": "DP bounds every attack in the worst case; one attack's result measures that attack on this data.",
         "c": "a weak attack says nothing about what a larger epsilon would let a stronger one do."}),
}
