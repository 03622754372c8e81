"""Self-checks of chapter 07's exercises (deployment)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_form_batches", "check_load_summary"]

NO_CAP = "a batch holds at most max_batch requests: close it when it is full, even before the wait ends"
FROM_LAST = "the wait starts when the batch's FIRST request arrives, not the previous one (it could wait forever)"
FIXED_CLOCK = "the wait starts when the batch's first request arrives, not on a fixed clock (t // max_wait)"
ONE_OVER_LATENCY = (
    "under concurrency requests overlap: throughput is answered requests / wall time (first sent to last answered), "
    "not 1 / mean latency"
)
MEAN_SD = "take the 95th percentile of the latencies themselves, not mean + 1.645 sd: latencies are skewed"
SECONDS = "report the percentiles in milliseconds (x 1000)"


def form_batches_reference(arrivals: list[float], max_batch: int, max_wait: float) -> list[list[int]]:
    """Batches of request indices: a batch opens at its first request and closes when full or max_wait later."""
    batches: list[list[int]] = []
    current: list[int] = []
    opened = 0.0
    for i, t in enumerate(arrivals):
        if current and (len(current) == max_batch or t > opened + max_wait):
            batches.append(current)
            current = []
        if not current:
            opened = t
        current.append(i)
    return batches + [current] if current else batches


def _from_last(arrivals, max_batch, max_wait):
    batches, current = [], []
    for i, t in enumerate(arrivals):
        if current and (len(current) == max_batch or t > arrivals[current[-1]] + max_wait):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def _fixed_clock(arrivals, max_batch, max_wait):
    batches: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(arrivals):
        window = int(t // max_wait)
        slot = 0
        while len(batches.get((window, slot), [])) == max_batch:
            slot += 1
        batches.setdefault((window, slot), []).append(i)
    return [batches[k] for k in sorted(batches)]


def _batch_cases() -> list[tuple[list[float], int, float]]:
    rng = np.random.default_rng(7)
    steady = list(np.round(np.cumsum(rng.exponential(0.002, 60)), 5))
    return [
        ([0.0, 0.001, 0.002, 0.010, 0.011, 0.030], 4, 0.005),
        ([0.0] * 10, 4, 0.005),  # a burst: full batches, no waiting
        ([i * 0.004 for i in range(8)], 16, 0.005),  # a steady trickle: the wait decides
        (steady, 8, 0.005),
        ([0.0], 4, 0.005),
    ]


def check_form_batches(fn: Callable) -> None:
    """Exercise 7.1: `fn(arrivals, max_batch, max_wait)` -> list of batches (lists of request indices)."""
    for arrivals, max_batch, max_wait in _batch_cases():
        got = _call("7.1", fn, list(arrivals), max_batch, max_wait)
        got = [[int(i) for i in batch] for batch in got]
        expected = form_batches_reference(arrivals, max_batch, max_wait)
        if got == expected:
            continue
        assert sorted(i for b in got for i in b) == list(range(len(arrivals))), (
            "Exercise 7.1: every request must be in exactly one batch, in arrival order"
        )
        if max(len(b) for b in got) > max_batch:
            raise AssertionError(f"Exercise 7.1: {NO_CAP}")
        for wrong, message in ((_from_last, FROM_LAST), (_fixed_clock, FIXED_CLOCK)):
            if got == wrong(arrivals, max_batch, max_wait):
                raise AssertionError(f"Exercise 7.1: {message}")
        raise AssertionError(f"Exercise 7.1: arrivals {arrivals[:6]}...: expected {expected[:3]}..., got {got[:3]}...")
    _passed("7.1", len(_batch_cases()))


def _load_case(seed: int, concurrency: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed-loop load test: `concurrency` clients, each sending its next request when the last is answered."""
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(np.log(0.02), 0.6, 2000)
    clock = np.zeros(concurrency)
    sent, answered = [], []
    for lat in latencies:
        client = int(clock.argmin())
        sent.append(clock[client])
        clock[client] += lat
        answered.append(clock[client])
    return np.array(sent), np.array(answered)


def check_load_summary(fn: Callable) -> None:
    """Exercise 7.2: `fn(sent_at, answered_at)` -> {"p50_ms", "p95_ms", "rps"} of a load test."""
    cases = [(0, 1), (1, 8), (2, 32)]
    for seed, concurrency in cases:
        sent, answered = _load_case(seed, concurrency)
        got = _call("7.2", fn, sent.copy(), answered.copy())
        assert isinstance(got, dict) and {"p50_ms", "p95_ms", "rps"} <= set(got), (
            "Exercise 7.2: return a dict with keys 'p50_ms', 'p95_ms' and 'rps'"
        )
        lat = answered - sent
        p50, p95 = np.percentile(lat * 1000, [50, 95])
        rps = len(lat) / (answered.max() - sent.min())
        if np.isclose(got["p95_ms"], p95 / 1000, rtol=0.02) or np.isclose(got["p50_ms"], p50 / 1000, rtol=0.02):
            raise AssertionError(f"Exercise 7.2: {SECONDS}")
        if np.isclose(got["p95_ms"], 1000 * (lat.mean() + 1.645 * lat.std()), rtol=0.01):
            raise AssertionError(f"Exercise 7.2: {MEAN_SD}")
        if concurrency > 1 and np.isclose(got["rps"], 1 / lat.mean(), rtol=0.02):
            raise AssertionError(f"Exercise 7.2: {ONE_OVER_LATENCY}")
        for name, value in (("p50_ms", p50), ("p95_ms", p95), ("rps", rps)):
            assert np.isclose(float(got[name]), value, rtol=0.01), (
                f"Exercise 7.2: {name} should be about {value:.4g} at concurrency {concurrency}, got {got[name]!r}"
            )
    _passed("7.2", len(cases))


QUESTIONS = {
    "7.3": Question(
        "With micro-batching on (a batch waits up to 5 ms for company) and ONE client sending one request at a time, "
        "what happens to each request's latency?",
        {
            "a": "nothing: the batcher only acts when several requests wait",
            "b": "it grows by up to the maximum wait: a lone request waits for company that never comes",
            "c": "it halves: batches are more efficient",
        },
        "b",
        {
            "a": "the batcher cannot know nobody else is coming; it waits the full max_wait before running a batch "
            "that is not full.",
            "b": "the notebook measured it: at concurrency 1 the batched service's median is about max_wait slower. "
            "Batching trades latency at low load for throughput at high load.",
            "c": "a batch of one is no more efficient than one request, and it waited first.",
        },
    ),
    "7.4": Question(
        "The service keeps only the sha256 of the API key and compares digests with hmac.compare_digest. Why not "
        "keep the key and compare with ==?",
        {
            "a": "== is slower",
            "b": "== stops at the first differing character, so response times leak how much of a guess is right; "
            "and a stored digest does not reveal the key if the config file leaks",
            "c": "compare_digest encrypts the key on the wire",
        },
        "b",
        {
            "a": "== is faster, and that is the problem: its time depends on the input.",
            "b": "compare_digest takes the same time wherever the strings differ, and the digest is useless to a "
            "reader of the config file.",
            "c": "nothing is encrypted on the wire here: on loopback that is fine, off this machine it needs TLS.",
        },
    ),
    "7.5": Question(
        "On a 2-core CPU, ONNX Runtime's int8 MiniLM spends about as long per sentence at batch 32 as at batch 1 "
        "(chapter 04). What can server-side micro-batching gain for it?",
        {
            "a": "about 32x throughput at concurrency 32",
            "b": "little: batching saves per-call overhead, not per-sentence compute, once batch 1 already keeps the "
            "cores busy; on a GPU, where batch 1 leaves the device mostly idle, it gains far more",
            "c": "nothing in any setting",
        },
        "b",
        {
            "a": "throughput can only grow as much as the per-sentence cost falls with batch size.",
            "b": "the notebook measures it: the gain tracks how much cheaper a sentence is inside a batch (more for "
            "PyTorch fp32 than for ONNX int8 on this CPU).",
            "c": "where a batch makes each sentence cheaper (PyTorch fp32 here, any GPU), batching raises throughput.",
        },
    ),
}
