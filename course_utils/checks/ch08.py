"""Self-checks of chapter 08's exercises (a generative LLM: sampling, memorisation, grounding)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from transformers.generation.logits_process import TopKLogitsWarper

from .. import audit
from ._common import Question, _call, _passed

__all__ = ["QUESTIONS", "check_top_k", "check_exposure", "check_supported_share"]

TOP_K_NONE = "not done yet; your function returned None: return a tensor of probabilities"
NOT_RENORMALISED = "renormalise: divide the kept probabilities by their sum (or take the softmax of the kept logits)"
SMALLEST = "keep the k LARGEST logits (the most likely tokens), not the smallest"
OFF_BY_ONE = "keep exactly k tokens: check how many entries of your result are above zero"
NOT_PROBABILITIES = "return probabilities (non-negative, summing to 1), not logits"

EXPOSURE_NONE = "not done yet; your function returned None: return a float"
ZERO_RANK = "ranks start at 1 (the most likely secret has rank 1): count the secrets scored strictly higher, plus 1"
ASCENDING = "rank by likelihood from the MOST likely: rank 1 is the largest log-probability"
NATURAL_LOG = "exposure is in bits: use log2, not the natural log"
RANK_ONLY = "exposure = log2(number of secrets) - log2(rank), not log2(rank) alone"

SHARE_NONE = "not done yet; your function returned None: return a float"
MEAN_NOT_MAX = "a sentence is supported by its BEST passage: take the max similarity over passages, not the mean"
NOT_NORMALISED = "cosine similarity needs unit vectors: divide each row by its L2 norm before the dot product"
STRICT = "supported means similarity >= threshold (at the threshold counts)"
PASSAGE_SHARE = "count answer SENTENCES that some passage supports, not passages that support some sentence"


def _logit_cases() -> list[tuple[torch.Tensor, int]]:
    """Seeded logits over vocabularies of different sizes, with the k to keep."""
    gen = torch.Generator().manual_seed(81)
    return [(torch.randn(vocab, generator=gen) * scale, k) for vocab, scale, k in ((50, 2.0, 5), (200, 1.0, 1),
                                                                                   (1000, 3.0, 40))]  # fmt: skip


def _reference_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """transformers' own top-k filter followed by a softmax."""
    return torch.softmax(TopKLogitsWarper(k)(None, logits[None].clone())[0], -1)


def check_top_k(fn: Callable) -> None:
    """Exercise 8.1: `fn(logits, k)` -> next-token probabilities keeping only the k most likely tokens."""
    cases = _logit_cases()
    for logits, k in cases:
        got = _call("8.1", fn, logits.clone(), k)
        if got is None:
            raise AssertionError(f"Exercise 8.1: {TOP_K_NONE}")
        got = torch.as_tensor(got, dtype=torch.float32)
        expected = _reference_top_k(logits, k)
        if got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5):
            continue
        if got.shape != expected.shape:
            raise AssertionError(f"Exercise 8.1: return one probability per token, shape {tuple(expected.shape)}")
        if (got < 0).any() or not math.isclose(float(got.sum()), 1.0, abs_tol=1e-4):
            kept = got > 0
            if (got >= 0).all() and kept.sum() == k and torch.allclose(got[kept], torch.softmax(logits, -1)[kept]):
                raise AssertionError(f"Exercise 8.1: {NOT_RENORMALISED}")
            raise AssertionError(f"Exercise 8.1: {NOT_PROBABILITIES}")
        if int((got > 0).sum()) != k:
            raise AssertionError(f"Exercise 8.1: {OFF_BY_ONE}")
        if set(torch.nonzero(got).flatten().tolist()) == set(logits.argsort()[:k].tolist()):
            raise AssertionError(f"Exercise 8.1: {SMALLEST}")
        raise AssertionError(f"Exercise 8.1: vocabulary {len(logits)}, k={k}: max difference "
                             f"{float((got - expected).abs().max()):.2e} from transformers' top-k")  # fmt: skip
    _passed("8.1", len(cases))


def _exposure_cases() -> list[tuple[np.ndarray, int]]:
    """Seeded score arrays over secret spaces of 10,000 and 1,000, and the index of the true secret."""
    rng = np.random.default_rng(82)
    cases = []
    for size in (10_000, 1_000, 10_000):
        scores = rng.normal(-12, 1.5, size)
        cases.append((scores, int(rng.integers(size))))
    scores = rng.normal(-12, 1.5, 10_000)
    cases.append((scores, int(np.argmax(scores))))  # the most likely secret: exposure log2(10,000)
    return cases


def _reference_exposure(scores: np.ndarray, secret: int) -> float:
    """Chapter 02's `audit.exposure`, on losses = -log-probabilities."""
    return audit.exposure(-scores[secret], -scores)


def check_exposure(fn: Callable) -> None:
    """Exercise 8.2: `fn(scores, secret)` -> exposure in bits of secret index `secret` among all `scores`."""
    cases = _exposure_cases()
    for scores, secret in cases:
        got = _call("8.2", fn, scores.copy(), secret)
        if got is None:
            raise AssertionError(f"Exercise 8.2: {EXPOSURE_NONE}")
        got = float(got)
        expected = _reference_exposure(scores, secret)
        if math.isclose(got, expected, abs_tol=1e-6):
            continue
        higher = int((scores > scores[secret]).sum())
        lower = int((scores < scores[secret]).sum())
        n = len(scores)
        mistakes = {
            ZERO_RANK: [math.log2(n) - math.log2(higher) if higher else math.inf],
            ASCENDING: [math.log2(n) - math.log2(lower + 1)],
            NATURAL_LOG: [math.log(n) - math.log(higher + 1)],
            RANK_ONLY: [math.log2(higher + 1), -math.log2(higher + 1)],
        }
        for hint, values in mistakes.items():
            if any(math.isclose(got, v, abs_tol=1e-6) for v in values):
                raise AssertionError(f"Exercise 8.2: {hint}")
        raise AssertionError(f"Exercise 8.2: {n} secrets, true one at index {secret}: expected {expected:.4f}, "
                             f"got {got:.4f}")  # fmt: skip
    _passed("8.2", len(cases))


def _share_cases() -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Seeded (answer sentence vectors, passage vectors, threshold), not unit length, some exactly at the threshold."""
    rng = np.random.default_rng(83)
    cases = []
    for n_answer, n_passages, threshold in ((5, 4, 0.6), (8, 3, 0.5), (3, 6, 0.7)):
        passages = rng.normal(size=(n_passages, 16)) * rng.uniform(0.5, 3, (n_passages, 1))
        answers = rng.normal(size=(n_answer, 16))
        answers[: n_answer // 2] += 2 * passages[rng.integers(n_passages, size=n_answer // 2)]  # near a passage
        cases.append((answers, passages, threshold))
    unit = np.eye(4)
    at = np.array([[0.6, 0.6, math.sqrt(0.28), 0], [0, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]])  # best: 0.6 (at), 1, 0.5
    cases.append((at, unit, 0.6))
    return cases


def _similarities(answers: np.ndarray, passages: np.ndarray, normalise: bool = True) -> np.ndarray:
    if normalise:
        answers = answers / np.linalg.norm(answers, axis=1, keepdims=True)
        passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    return answers @ passages.T  # (answer sentences, passages)


def check_supported_share(fn: Callable) -> None:
    """Exercise 8.3: `fn(answer_vectors, passage_vectors, threshold)` -> share of answer sentences supported."""
    cases = _share_cases()
    for answers, passages, threshold in cases:
        got = _call("8.3", fn, answers.copy(), passages.copy(), threshold)
        if got is None:
            raise AssertionError(f"Exercise 8.3: {SHARE_NONE}")
        got = float(got)
        sims = _similarities(answers, passages)
        expected = float((sims.max(1) >= threshold - 1e-9).mean())
        if math.isclose(got, expected, abs_tol=1e-9):
            continue
        mistakes = {
            MEAN_NOT_MAX: [float((sims.mean(1) >= threshold).mean())],
            NOT_NORMALISED: [float((_similarities(answers, passages, False).max(1) >= threshold).mean())],
            STRICT: [float((sims.max(1) > threshold + 1e-9).mean())],
            PASSAGE_SHARE: [float((sims.max(0) >= threshold - 1e-9).mean())],
        }
        for hint, values in mistakes.items():
            if any(math.isclose(got, v, abs_tol=1e-9) for v in values):
                raise AssertionError(f"Exercise 8.3: {hint}")
        raise AssertionError(f"Exercise 8.3: {len(answers)} sentences, {len(passages)} passages, threshold "
                             f"{threshold}: expected {expected:.3f}, got {got:.3f}")  # fmt: skip
    _passed("8.3", len(cases))


QUESTIONS = {
    "8.4": Question(
        "LoRA fine-tuning with DP-SGD at epsilon = 8 (per training example) is run on text in which one customer's "
        "PIN appears in 10 separate training examples. What does the guarantee say about that PIN?",
        {
            "a": "it is protected at epsilon = 8, like every other record",
            "b": "it is protected at epsilon = 0.8: ten copies share the budget",
            "c": "only a weak bound: by group privacy, about 10 x 8 = 80, so low measured exposure is an observation, "
            "not a promise",
            "d": "nothing at all: DP does not apply to text",
        },
        "c",
        {
            "a": "epsilon = 8 bounds what changes when ONE example is added or removed; the PIN is in 10 examples, so "
            "removing it changes 10 examples at once.",
            "b": "copies do not divide the budget, they multiply it: each copy is an example the mechanism may use.",
            "c": "group privacy: k examples get k x epsilon (and a larger delta), so the guarantee for a 10-copy "
            "secret is about epsilon = 80, which promises little; chapter 08 measured low exposure anyway, but that "
            "is a measurement of this run, and user-level DP (chapter 02) is the fix that promises it.",
            "d": "DP-SGD bounds the influence of each training example whatever it holds; the question is which unit "
            "(example, user) the guarantee is about.",
        },
    ),
    "8.5": Question(
        "A retrieval-grounded answer sentence has cosine similarity 0.92 with the passage it cites. What does that "
        "establish?",
        {
            "a": "the sentence is true",
            "b": "the sentence says what the passage says",
            "c": "the sentence is close in meaning-space to the passage: likely a paraphrase, but a negation or a "
            "changed number can score just as high",
            "d": "nothing: embedding similarity is unrelated to content",
        },
        "c",
        {
            "a": "support is about the passage, not the world: a passage can be wrong (a review is an opinion), and "
            "a grounded answer repeats it.",
            "b": "sentence embeddings place 'the film is not funny' close to 'the film is funny'; similarity is not "
            "entailment, which is why the course calls its groundedness score an approximation.",
            "c": "a high similarity is evidence of a paraphrase; checking entailment needs an NLI model or a human, "
            "and the course's score is a cheap filter, stated as an approximation.",
            "d": "similarity does track topic and wording (unrelated sentences score near 0); it just cannot see "
            "negation or small factual changes reliably.",
        },
    ),
}
