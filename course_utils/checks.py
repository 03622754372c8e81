"""Self-checks that exercise notebooks call on the learner's functions (introduced in chapter 00).

Each check runs the learner's function on a few cases, compares it with the course's reference (the
`course_utils` function or scikit-learn) and prints one line when all pass. An unfinished stub
(NotImplementedError) or a wrong answer raises AssertionError with a hint.
"""
from __future__ import annotations

import math
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


# ---------------------------------------------------------------- chapter 01

EMAIL_CASES = ["write to ana.lopez+news@mail.example.org today", "no address here", "two: a@b.co and c.d@e.io.",
               "RT @someone: hi", "price $19.99 at 10:30", "mail karleem@anonymous now"]


def check_redact_emails(fn: Callable) -> None:
    """Exercise 1.1: e-mail addresses become [EMAIL], nothing else changes."""
    from .cleaning import PII_PATTERNS

    for text in EMAIL_CASES:
        expected = PII_PATTERNS["EMAIL"].sub("[EMAIL]", text)
        got = _call("1.1", fn, text)
        assert got == expected, (f"Exercise 1.1: for {text!r} expected {expected!r}, got {got!r}; match a local "
                                 "part, @, and a domain, and leave handles (@name after a space) alone")
    _passed("1.1", len(EMAIL_CASES))


def check_shingle_jaccard(fn: Callable) -> None:
    """Exercise 1.2: Jaccard similarity of character k-gram sets of normalised text."""
    from .dataprep import jaccard

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
    from sklearn.preprocessing import MinMaxScaler

    rng = np.random.default_rng(3)
    for _ in range(3):
        train, test = rng.normal(0, 2, 50), rng.normal(0.5, 2.5, 20)
        expected = MinMaxScaler().fit(train.reshape(-1, 1)).transform(test.reshape(-1, 1)).ravel()
        got = np.asarray(_call("1.3", fn, pd.Series(train), pd.Series(test)), dtype=float)
        assert got.shape == expected.shape and np.allclose(got, expected), (
            "Exercise 1.3: scale with the TRAINING min and max only; test values may fall outside [0, 1]")
    _passed("1.3", 3)


def check_random_swap(fn: Callable) -> None:
    """Exercise 1.4: EDA's random swap keeps the words, changes their order, and is reproducible."""
    text = "the quiet american is a handsome and intelligent film"
    for n in (0, 1, 3):
        a = _call("1.4", fn, text, np.random.default_rng(7), n)
        b = fn(text, np.random.default_rng(7), n)
        assert sorted(a.split()) == sorted(text.split()), "Exercise 1.4: a swap must keep exactly the same words"
        assert a == b, "Exercise 1.4: use only the rng you are given, so the same seed gives the same result"
        assert (a == text) == (n == 0), f"Exercise 1.4: n={n} should change the order"
    assert fn("one", np.random.default_rng(0), 2) == "one", "Exercise 1.4: a one-word text has nothing to swap"
    _passed("1.4", 4)


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


# ---------------------------------------------------------------- chapter 02

def check_laplace_count(fn: Callable) -> None:
    """Exercise 2.1: count + Laplace(sensitivity / epsilon) noise; epsilon <= 0 refused."""
    for count, eps in [(120, 1.0), (7, 0.1), (0, 4.0)]:
        rng = np.random.default_rng(0)
        draws = np.array([_call("2.1", fn, count, eps, rng) for _ in range(20_000)], dtype=float)
        assert abs(draws.mean() - count) < 0.05 * (1 / eps) * 10, (
            f"Exercise 2.1: count={count}, epsilon={eps}: the noisy counts average {draws.mean():.2f}; the noise "
            "must be centred on the true count")
        expected_std = math.sqrt(2) / eps
        assert abs(draws.std() / expected_std - 1) < 0.05, (
            f"Exercise 2.1: epsilon={eps}: noise std {draws.std():.3f}, expected sqrt(2)/epsilon = "
            f"{expected_std:.3f}; use rng.laplace(0, sensitivity / epsilon)")
    try:
        _call("2.1", fn, 10, 0.0, np.random.default_rng(0))
    except ValueError:
        pass
    else:
        raise AssertionError("Exercise 2.1: epsilon=0 should raise ValueError (no finite noise gives 0-DP)")
    _passed("2.1", 4)


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


def check_gaussian_epsilon(fn: Callable) -> None:
    """Exercise 2.3: epsilon of `steps` full-batch Gaussian steps by RDP composition and conversion."""
    from .privacy import epsilon_after

    for sigma, steps, delta in [(1.0, 1, 1e-5), (4.0, 100, 1e-5), (10.0, 1000, 1e-6)]:
        expected = epsilon_after(1.0, sigma, steps, delta)
        got = float(_call("2.3", fn, sigma, steps, delta))
        assert abs(got / expected - 1) < 0.01, (
            f"Exercise 2.3: sigma={sigma}, steps={steps}, delta={delta}: expected {expected:.4f}, got {got:.4f}; "
            "RDP adds up over steps (steps * alpha / (2 sigma^2)); convert each order and take the minimum")
    _passed("2.3", 3)


def check_attack_auc(fn: Callable) -> None:
    """Exercise 2.4: the loss attack's AUC as the share of (member, non-member) pairs it orders correctly."""
    from sklearn.metrics import roc_auc_score

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
    """Exercise 2.5: exposure = log2(N) - log2(rank), rank 1 for the lowest loss."""
    from .audit import exposure

    rng = np.random.default_rng(5)
    losses = rng.exponential(1.0, 256)
    for i in (int(np.argmin(losses)), int(np.argmax(losses)), 17):
        expected = exposure(losses[i], losses)
        got = float(_call("2.5", fn, float(losses[i]), losses.copy()))
        assert abs(got - expected) < 1e-9, (
            f"Exercise 2.5: expected {expected:.3f} bits, got {got:.3f}; rank = 1 + how many candidates have a "
            "strictly lower loss")
    _passed("2.5", 3)
