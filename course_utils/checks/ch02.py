"""Self-checks of chapter 02's exercises (differential privacy)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ..privacy import epsilon_after, group_privacy
from ._common import Question, _call, _passed

__all__ = [
    "QUESTIONS",
    "check_laplace_count",
    "check_clip_per_example",
    "check_steps_within",
    "check_attack_auc",
    "check_user_level",
]

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
            "must be centred on the true count"
        )
        expected_std = math.sqrt(2) / eps
        assert abs(draws.std() / expected_std - 1) < 0.05, (
            f"Exercise 2.1: epsilon={eps}: noise std {draws.std():.3f}, expected sqrt(2)/epsilon = "
            f"{expected_std:.3f}; use rng.laplace(0, sensitivity / epsilon)"
        )
        mad = float(np.abs(draws - count).mean())
        assert abs(mad * eps - 1) < 0.05, (
            f"Exercise 2.1: epsilon={eps}: mean |noise| {mad:.3f}, expected 1/epsilon = {1 / eps:.3f} for Laplace "
            f"noise (Gaussian noise of the same std gives {GAUSSIAN_MAD / eps:.3f}); draw rng.laplace(0, 1 / epsilon)"
        )
    runs = []
    for _ in range(2):  # two fresh generators with the same seed
        rng = np.random.default_rng(0)
        runs.append([float(fn(50, 0.5, rng)) for _ in range(5)])
    assert runs[0] == runs[1], (
        "Exercise 2.1: two generators made with np.random.default_rng(0) gave different draws; draw the noise from "
        "the rng you are given, not from np.random or a new generator"
    )
    for bad in (0.0, -1.0):
        try:
            fn(10, bad, np.random.default_rng(0))
        except ValueError:
            continue
        except Exception as err:  # e.g. ZeroDivisionError from 1 / 0.0 before any check
            outcome = f"it raised {type(err).__name__}"
        else:
            outcome = "it returned a value"
        raise AssertionError(
            f"Exercise 2.1: epsilon={bad} should raise ValueError (no finite noise gives 0-DP, "
            f"and epsilon < 0 is meaningless), but {outcome}; check epsilon > 0 first"
        )
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
                f"{tuple(got[name].shape)}"
            )
            assert torch.allclose(got[name], expected, atol=1e-5), (
                f"Exercise 2.2: clip={clip}: {name} differs; the norm is over all parameters of one example "
                "together, and the factor is min(1, C / (norm + 1e-6))"
            )
    _passed("2.2", 3)


def steps_within_reference(q: float, sigma: float, delta: float, target_eps: float) -> int:
    """The most DP-SGD steps at Poisson rate q and noise sigma whose RDP epsilon stays within target_eps (0 if none):
    epsilon grows with the steps, so double until over, then bisect."""
    if epsilon_after(q, sigma, 1, delta) > target_eps:
        return 0
    low, high = 1, 2
    while epsilon_after(q, sigma, high, delta) <= target_eps:
        low, high = high, high * 2
    while high - low > 1:  # epsilon(low) <= target < epsilon(high)
        mid = (low + high) // 2
        low, high = (mid, high) if epsilon_after(q, sigma, mid, delta) <= target_eps else (low, mid)
    return low


STEPS_CASES = [
    (0.01, 1.0, 1e-5, 2.0),
    (0.05, 1.1, 1e-5, 8.0),
    (1.0, 10.0, 1e-5, 3.0),
    (0.2, 0.8, 1e-5, 0.5),
    (0.004, 0.7, 1e-6, 3.0),
]


def check_steps_within(fn: Callable) -> None:
    """Exercise 2.3: how many steps a privacy budget buys, from the RDP accountant (privacy.epsilon_after)."""
    for q, sigma, delta, target in STEPS_CASES:
        expected = steps_within_reference(q, sigma, delta, target)
        got = _call("2.3", fn, q, sigma, delta, target)
        where = f"Exercise 2.3: q={q}, sigma={sigma}, delta={delta}, target epsilon {target}: expected {expected}"
        assert isinstance(got, (int, np.integer)), f"{where}; return a whole number of steps, got {got!r}"
        got = int(got)
        if got == expected:
            continue
        one = epsilon_after(q, sigma, 1, delta)
        if expected and got == expected + 1:
            hint = "that is the first step over budget: return the last one within it"
        elif got == int(target / one) or got == round(target / one):
            hint = (
                "epsilon does not grow linearly with the steps (RDP composes additively, then converts): "
                "search with the accountant itself"
            )
        elif got > expected:
            hint = f"epsilon after {got} steps is {epsilon_after(q, sigma, got, delta):.3f}, over the target"
        else:
            hint = f"epsilon after {expected} steps is still {epsilon_after(q, sigma, expected, delta):.3f}"
        raise AssertionError(f"{where}, got {got}; {hint}")
    _passed("2.3", len(STEPS_CASES))


def check_attack_auc(fn: Callable) -> None:
    """Exercise 2.4: the loss attack's AUC as the share of (member, non-member) pairs it orders correctly."""
    rng = np.random.default_rng(4)
    cases = [
        (rng.exponential(0.3, 200), rng.exponential(0.5, 150)),
        (np.array([0.1, 0.2, 0.2]), np.array([0.2, 0.9])),
        (rng.exponential(1.0, 50), rng.exponential(1.0, 60)),
    ]
    for members, nonmembers in cases:
        expected = roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(nonmembers))], -np.r_[members, nonmembers])
        got = float(_call("2.4", fn, members.copy(), nonmembers.copy()))
        assert abs(got - expected) < 1e-9, (
            f"Exercise 2.4: expected AUC {expected:.4f}, got {got:.4f}; count pairs where the member's loss is "
            "lower, ties count one half"
        )
    _passed("2.4", 3)


def chain_delta(epsilon: float, delta: float, k: int) -> float:
    """The tightest delta of the k-step chain argument: delta * (1 + e^eps + ... + e^((k-1) eps)), capped at 1."""
    return min(1.0, delta * sum(math.exp(i * epsilon) for i in range(k)))


def check_user_level(fn: Callable) -> None:
    """Exercise 2.5: the guarantee for one person who contributed k records, by group privacy.

    Going from a data set to one without a person's k records takes k neighbouring steps; each multiplies the
    probability bound by e^eps and adds delta. Accepted: epsilon = k eps, and any delta between that chain's sum
    delta (1 + e^eps + ... + e^((k-1) eps)) and the textbook bound k e^((k-1) eps) delta (capped at 1).
    """
    cases = [(1.0, 1e-5, 1), (0.5, 1e-6, 3), (1.0, 1e-5, 4), (8.0, 1e-5, 2), (0.1, 1e-7, 10)]
    for epsilon, delta, k in cases:
        got = _call("2.5", fn, epsilon, delta, k)
        assert isinstance(got, tuple) and len(got) == 2, f"Exercise 2.5: return (epsilon, delta), got {got!r}"
        eps_k, delta_k = map(float, got)
        where = f"Exercise 2.5: epsilon={epsilon}, delta={delta}, k={k}: got ({eps_k:.4g}, {delta_k:.4g})"
        assert math.isclose(eps_k, k * epsilon, rel_tol=1e-9), (
            f"{where}; removing one person's k records is k neighbouring steps, and each step multiplies the "
            "probability bound by e^epsilon: the person's epsilon is k * epsilon"
        )
        low, high = chain_delta(epsilon, delta, k), min(1.0, group_privacy(epsilon, delta, k)[1])
        assert delta_k >= low * (1 - 1e-9), (
            f"{where}; delta grows faster than k * delta: at each step of the chain the delta already added is "
            f"multiplied by e^epsilon, giving delta * (1 + e^eps + ... + e^((k-1) eps)) = {low:.4g}"
        )
        assert delta_k <= high * (1 + 1e-9), (
            f"{where}; that delta is looser than even the textbook bound k e^((k-1) eps) delta = {high:.4g}"
        )
    _passed("2.5", len(cases))


QUESTIONS = {
    "2.6": Question(
        "A model is trained with DP-SGD at (epsilon = 8, delta = 1/(10N)) per sentence. A secret appears in ten "
        "training sentences. What does DP guarantee about the secret?",
        {
            "a": "epsilon = 8, like every record",
            "b": "epsilon = 80 with the same delta",
            "c": "nothing useful: ten records together are (80, 10 e^72 delta)-DP, and that delta is far above 1",
        },
        "c",
        {
            "a": "DP's unit is one record; a secret written ten times is a group of ten records.",
            "b": "k epsilon holds for pure DP only; with delta > 0 group privacy multiplies delta by k e^((k-1) eps).",
            "c": "group privacy: (k eps, k e^((k-1) eps) delta). At eps = 8 and k = 10 the delta term exceeds 1.",
        },
    ),
    "2.7": Question(
        "A loss-threshold attack on your epsilon = 8 model reaches ROC AUC 0.51. What can you conclude?",
        {
            "a": "the model is in effect private at a much smaller epsilon",
            "b": "this attack learns little; epsilon = 8 itself allows any attack an AUC up to 0.9997",
            "c": "epsilon = 8 is stricter than needed and can be raised safely",
        },
        "b",
        {
            "a": "an attack gives a lower bound on leakage, never an upper one: a stronger attack may do better.",
            "b": "DP bounds every attack in the worst case; one attack's result measures that attack on this data.",
            "c": "a weak attack says nothing about what a larger epsilon would let a stronger one do.",
        },
    ),
}
