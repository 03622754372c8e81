"""Self-checks of chapter 03's exercises (federated learning)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..federated import fedavg, trimmed_mean
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_fedavg_step", "check_trimmed_mean", "check_dp_fedavg", "check_pairwise_masks"]


PLAIN_MEAN = "that is the plain mean; FedAvg weights each client's update by its number of examples"
UNNORMALISED = "the weights must sum to 1: divide by the total number of examples"
WHOLE_CLIENTS = "you dropped whole clients by norm; trim each coordinate on its own (sort along the client axis)"
ONE_END = "cut floor(trim K) values at BOTH ends of each coordinate"
BY_COUNT = (
    "divide by the EXPECTED number of clients qK, not by how many came: the count itself depends on who took part"
)
PER_COORDINATE = "clip each client's whole update by its L2 norm, not each coordinate"


def _refuse(exercise: str, got: np.ndarray, mistakes: dict[str, np.ndarray]) -> None:
    """Raise the message of the first typical wrong answer that `got` equals."""
    for message, wrong in mistakes.items():
        if np.allclose(got, wrong, atol=1e-5):
            raise AssertionError(f"Exercise {exercise}: {message}")


def check_fedavg_step(fn: Callable) -> None:
    """Exercise 3.1: new global = global + size-weighted mean of the client updates (arrays of shape (K, D))."""
    import torch

    rng = np.random.default_rng(0)
    for k, d in [(3, 5), (5, 40), (1, 7)]:
        glob, updates = rng.normal(size=d), rng.normal(size=(k, d))
        sizes = rng.integers(1, 100, size=k)
        expected = glob + fedavg(torch.as_tensor(updates, dtype=torch.float64), sizes).double().numpy()
        got = np.asarray(_call("3.1", fn, glob.copy(), updates.copy(), sizes.copy()), dtype=float)
        assert got.shape == (d,), f"Exercise 3.1: return the new global parameters, shape ({d},), got {got.shape}"
        if k > 1:
            plain, unnormalised = glob + updates.mean(0), glob + (updates * sizes[:, None]).sum(0)
            _refuse("3.1", got, {PLAIN_MEAN: plain, UNNORMALISED: unnormalised})
        assert np.allclose(got, expected, atol=1e-5), (
            f"Exercise 3.1: K={k}: max difference {np.abs(got - expected).max():.3g}; add the weighted mean of the "
            "updates (weights = sizes / total size) to the global parameters"
        )
    _passed("3.1", 3)


def check_trimmed_mean(fn: Callable) -> None:
    """Exercise 3.2: per coordinate, drop the floor(trim K) smallest and largest values, average the rest."""
    import torch

    rng = np.random.default_rng(1)
    for k, trim in [(10, 0.1), (10, 0.25), (7, 0.2), (5, 0.0)]:
        updates = rng.normal(size=(k, 30))
        updates[0, :10] = 1e3  # one attacker, huge in some coordinates
        updates[1, 10:20] = -1e3  # another, in other coordinates
        expected = trimmed_mean(torch.as_tensor(updates), trim).numpy()
        got = np.asarray(_call("3.2", fn, updates.copy(), trim), dtype=float)
        assert got.shape == (30,), f"Exercise 3.2: return one value per coordinate, shape (30,), got {got.shape}"
        cut = int(trim * k)
        if cut:
            by_norm = updates[np.argsort(np.linalg.norm(updates, axis=1))[: k - 2 * cut]].mean(0)
            one_end = np.sort(updates, axis=0)[: k - cut].mean(0)
            _refuse("3.2", got, {WHOLE_CLIENTS: by_norm, ONE_END: one_end})
        assert np.allclose(got, expected, atol=1e-8), (
            f"Exercise 3.2: K={k}, trim={trim}: max difference {np.abs(got - expected).max():.3g}; sort each "
            "coordinate over the clients, drop floor(trim K) at each end, average the rest"
        )
    _passed("3.2", 4)


def check_dp_fedavg(fn: Callable) -> None:
    """Exercise 3.3: clip each client's whole update to norm C, sum, add N(0, (sigma C)^2), divide by qK."""
    rng = np.random.default_rng(2)
    updates = rng.normal(size=(6, 2000)) * np.array([0.1, 0.5, 1, 3, 10, 100])[:, None] / 40
    norms = np.linalg.norm(updates, axis=1, keepdims=True)
    clip, expected_clients = 1.0, 8.0
    clipped = updates * np.minimum(1.0, clip / norms)
    exact = clipped.sum(0) / expected_clients
    got = np.asarray(_call("3.3", fn, updates.copy(), clip, 0.0, expected_clients, np.random.default_rng(0)))
    assert got.shape == (2000,), f"Exercise 3.3: return one averaged update of shape (2000,), got {got.shape}"
    by_count, per_coordinate = clipped.sum(0) / len(updates), np.clip(updates, -clip, clip).sum(0) / expected_clients
    _refuse("3.3", got, {BY_COUNT: by_count, PER_COORDINATE: per_coordinate})
    assert np.allclose(got, exact, atol=1e-9), (
        "Exercise 3.3: with noise_multiplier 0 the result must be the clipped updates' sum / expected_clients; "
        "scale each update by min(1, C / ||u||)"
    )
    noisy = [
        np.asarray(fn(updates.copy(), clip, 2.0, expected_clients, np.random.default_rng(s))) - exact for s in range(5)
    ]
    std = float(np.std(noisy))
    assert abs(std / (2.0 * clip / expected_clients) - 1) < 0.05, (
        f"Exercise 3.3: the noise on the average has std {std:.4f}, expected sigma C / (qK) = "
        f"{2.0 * clip / expected_clients:.4f}; add N(0, (sigma C)^2) ONCE to the sum, then divide"
    )
    again = np.asarray(fn(updates.copy(), clip, 2.0, expected_clients, np.random.default_rng(0)))
    assert np.allclose(again, noisy[0] + exact), (
        "Exercise 3.3: two generators seeded alike gave different noise; draw it from the rng you are given"
    )
    _passed("3.3", 3)


def check_pairwise_masks(fn: Callable) -> None:
    """Exercise 3.4: masks from pair streams: i adds stream(i, j) for j > i and subtracts it for j < i."""
    rng = np.random.default_rng(3)
    for n, size in [(3, 5), (5, 64)]:
        streams = {
            (i, j): rng.integers(0, 2**63, size=size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
            for i in range(n)
            for j in range(i + 1, n)
        }
        got = [np.asarray(m, dtype=np.uint64) for m in _call("3.4", fn, {k: v.copy() for k, v in streams.items()}, n)]
        assert len(got) == n and all(m.shape == (size,) for m in got), (
            f"Exercise 3.4: return a list of {n} masks of shape ({size},)"
        )
        total = np.zeros(size, dtype=np.uint64)
        for m in got:
            total = total + m
        assert not total.any(), (
            "Exercise 3.4: the masks must sum to 0 modulo 2^64: for each pair one client adds the stream and the "
            "other subtracts it"
        )
        for i in range(n):
            expected = np.zeros(size, dtype=np.uint64)
            for (a, b), s in streams.items():
                expected = expected + s if a == i else expected - s if b == i else expected
            assert np.array_equal(got[i], expected), (
                f"Exercise 3.4: client {i}'s mask must be the sum of +stream(i, j) for j > i and -stream(j, i) for "
                "j < i (all modulo 2^64); each client uses only the streams of its own pairs"
            )
    _passed("3.4", 2)


QUESTIONS = {
    "3.5": Question(
        "The seed document says federated learning achieves privacy protection because training happens on the "
        "local nodes. The server sees each client's model update. What is true?",
        {
            "a": "the data never leaves the client, so nothing about it can be inferred",
            "b": "one update can reveal a client's labels or words; secure aggregation hides single updates and DP "
            "bounds what the aggregate and the model reveal",
            "c": "the updates are safe once there are more than ten clients",
        },
        "b",
        {
            "a": "updates are functions of the data: section 5 reads a client's label share from its update alone.",
            "b": "federation moves data less, but privacy needs secure aggregation (who sees what) and DP (what any "
            "output reveals).",
            "c": "the number of clients does not hide an update the server sees in the clear.",
        },
    ),
    "3.6": Question(
        "A user contributed 50 sentences. Model A: DP-SGD with epsilon = 2 per sentence. Model B: DP-FedAvg with "
        "epsilon = 2 per client, the user being one client. Which protects this user as a whole?",
        {
            "a": "A and B equally: both are epsilon = 2",
            "b": "A, because its unit is smaller",
            "c": "B: its unit is everything the user contributed; A gives the user only group privacy over 50 records",
        },
        "c",
        {
            "a": "the same epsilon over different units: one sentence vs one user.",
            "b": "a smaller unit protects less of a person: 50 records are a group of 50.",
            "c": "user-level (client-level) DP covers all of a user's data at once, which is what a person needs.",
        },
    ),
}
