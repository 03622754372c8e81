"""Calibration and out-of-distribution (OOD) detection (chapter 06): reliability tables, expected calibration error,
temperature scaling, and scores that tell in-domain inputs from shifted ones (MSP, k-NN, Mahalanobis)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.special import softmax as _softmax
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import normalize

LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # fit_temperature searches T in [0.05, 20]
MAHALANOBIS_RIDGE = 1e-3  # added to the tied covariance, relative to its mean variance (dim > n, collinear features)
_CHUNK = 1024  # knn_score compares this many inputs with the reference at a time (memory: CHUNK x len(reference))


def _check_bins(bins: int) -> None:
    """Reject a bin count that is not a positive integer."""
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}; pass for example bins=15")


def _check_labels(labels: np.ndarray, n: int, classes: int, name: str) -> np.ndarray:
    """Labels as an integer vector of length n with every value in [0, classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels must be 1-D with one label per row of {name} ({n}), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}; use labels.astype(int)")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"labels must lie in [0, {classes}) for {classes} classes, got {labels.min()} to {labels.max()}; "
            "map them to column indices"
        )
    return labels


def _check_probs(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities as a non-empty (N, C) array in [0, 1], and labels checked against them."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"probs must be a non-empty 2-D array (N, C), got shape {probs.shape}")
    if not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError("probs must lie in [0, 1]; pass softmax(logits), not the logits")
    if labels is not None:
        labels = _check_labels(labels, len(probs), probs.shape[1], "probs")
    return probs, labels


def _check_logits(logits: np.ndarray) -> np.ndarray:
    """Logits as a finite (N, C) float array."""
    logits = np.asarray(logits, dtype=float)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite; drop or fix the rows with nan or inf")
    return logits


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (N, C) of softmax(logits / temperature), numerically stable (chapter 06)."""
    logits = _check_logits(logits)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}; T > 1 softens, T < 1 sharpens")
    return _softmax(logits / temperature, axis=1)  # scipy subtracts the row maximum first


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Reliability table of top-label confidence: one row per non-empty equal-width bin (chapter 06).

    Bins are (lower, upper] with 0 in the first, as scikit-learn's `calibration_curve(strategy="uniform")`.
    """
    probs, labels = _check_probs(probs, labels)
    _check_bins(bins)
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(float)  # (N,)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], confidence)  # (N,) in [0, bins); 1.0 lands in the last bin
    count = np.bincount(ids, minlength=bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "lower": edges[:-1][keep],
            "upper": edges[1:][keep],
            "count": count[keep],
            "confidence": np.bincount(ids, weights=confidence, minlength=bins)[keep] / count[keep],
            "accuracy": np.bincount(ids, weights=correct, minlength=bins)[keep] / count[keep],
        }
    )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: sum over bins of count/N x |accuracy - confidence| (Guo et al. 2017; chapter 06)."""
    table = reliability(probs, labels, bins)
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["accuracy"] - table["confidence"]).abs()).sum())


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels, probabilities clipped at 1e-12 (chapter 06)."""
    probs, labels = _check_probs(probs, labels)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def _nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """NLL of softmax(logits / temperature) from log-probabilities (no clipping needed)."""
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T in [0.05, 20] minimising the NLL of softmax(logits / T) (Guo et al. 2017; ch. 06)."""
    logits = _check_logits(logits)
    if len(logits) < 2:
        raise ValueError(f"fit_temperature needs at least 2 examples, got {len(logits)}; pass the validation split")
    labels = _check_labels(labels, len(logits), logits.shape[1], "logits")
    result = minimize_scalar(
        lambda log_t: _nll_at(logits, labels, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def msp_score(probs: np.ndarray) -> np.ndarray:
    """Maximum softmax probability per input; higher = more in-distribution (Hendrycks & Gimpel 2017; ch. 06)."""
    probs, _ = _check_probs(probs)
    return probs.max(axis=1)


def _check_features(reference: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference and input features as non-empty 2-D float arrays of the same width."""
    reference, features = np.asarray(reference, dtype=float), np.asarray(features, dtype=float)
    if reference.ndim != 2 or features.ndim != 2 or len(reference) == 0:
        raise ValueError(
            f"reference and features must be 2-D (N, D), reference non-empty, got {reference.shape} and "
            f"{features.shape}"
        )
    if reference.shape[1] != features.shape[1]:
        raise ValueError(
            f"reference has {reference.shape[1]} dimensions but features {features.shape[1]}; use the same encoder"
        )
    return reference, features


def knn_score(reference: np.ndarray, features: np.ndarray, k: int = 10) -> np.ndarray:
    """Minus the cosine distance to the k-th nearest L2-normalised reference vector (Sun et al. 2022; ch. 06)."""
    reference, features = _check_features(reference, features)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(reference):
        raise ValueError(f"k must be an integer in [1, {len(reference)}] (the reference size), got {k!r}")
    reference, features = normalize(reference), normalize(features)  # unit rows: cosine = dot product
    kth = np.empty(len(features))
    for start in range(0, len(features), _CHUNK):
        similarity = features[start : start + _CHUNK] @ reference.T  # (chunk, N_ref)
        kth[start : start + _CHUNK] = np.partition(similarity, -k, axis=1)[:, -k]  # k-th largest similarity
    return np.clip(kth - 1.0, -2.0, 0.0)  # minus the cosine distance 1 - similarity


def mahalanobis_score(reference: np.ndarray, reference_labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Minus the smallest squared Mahalanobis distance to a class mean, one tied covariance (Lee et al. 2018; ch. 06).

    A ridge of MAHALANOBIS_RIDGE x the mean variance keeps the covariance invertible with more dimensions than vectors.
    """
    reference, features = _check_features(reference, features)
    reference_labels = np.asarray(reference_labels)
    if reference_labels.ndim != 1 or len(reference_labels) != len(reference):
        raise ValueError(
            f"reference_labels must be 1-D with one label per reference row ({len(reference)}), "
            f"got shape {reference_labels.shape}"
        )
    classes = np.unique(reference_labels)
    means = np.stack([reference[reference_labels == c].mean(axis=0) for c in classes])  # (C, D)
    centred = reference - means[np.searchsorted(classes, reference_labels)]  # (N, D)
    tied = centred.T @ centred / len(centred)  # (D, D), shared by all classes
    if not np.trace(tied) > 0:
        raise ValueError("reference vectors do not vary within their classes; pass more than one distinct vector")
    ridge = MAHALANOBIS_RIDGE * np.trace(tied) / len(tied)
    precision = np.linalg.inv(tied + ridge * np.eye(len(tied)))  # (D, D)
    distances = np.stack([(((features - mean) @ precision) * (features - mean)).sum(axis=1) for mean in means])
    return -distances.min(axis=0)  # (M,); distances is (C, M)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """ROC AUC of telling in-distribution (positive) from OOD inputs by a score (scikit-learn; chapter 06)."""
    in_scores, out_scores = np.ravel(in_scores).astype(float), np.ravel(out_scores).astype(float)
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError(
            f"auroc needs in- and out-of-distribution scores, got {len(in_scores)} and {len(out_scores)}; "
            "score both sets"
        )
    truth = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(roc_auc_score(truth, np.r_[in_scores, out_scores]))


def refusal_threshold(in_scores: np.ndarray, keep: float = 0.95) -> float:
    """Score threshold that answers at least `keep` of in-domain inputs (score >= threshold) (chapter 06)."""
    in_scores = np.ravel(in_scores).astype(float)
    if len(in_scores) == 0:
        raise ValueError("in_scores is empty; score the in-domain validation inputs first")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}; 0.95 answers 95% of in-domain inputs")
    return float(np.quantile(in_scores, 1 - keep, method="lower"))


def plot_reliability(tables: dict[str, pd.DataFrame], ax=None):
    """Reliability diagram: accuracy against confidence per bin for each named table, the diagonal dashed (ch. 06)."""
    if not tables:
        raise ValueError("tables is empty; pass for example {'before': reliability(...), 'after': reliability(...)}")
    for name, table in tables.items():
        if not {"confidence", "accuracy"} <= set(table.columns):
            raise ValueError(f"table {name!r} lacks confidence/accuracy columns; pass reliability(probs, labels)")
    ax = ax if ax is not None else plt.subplots(figsize=(4.5, 4.5))[1]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, table in tables.items():
        ax.plot(table["confidence"], table["accuracy"], marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (mean per bin)", ylabel="accuracy", title="Reliability")
    ax.legend(loc="upper left")
    return ax
