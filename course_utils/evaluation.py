"""Evaluation: predictions from logits, accuracy/F1/confusion via scikit-learn, error analysis, ranking (chapter 00)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def predictions_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Class ids from sequence-classification logits of shape (batch, num_labels): argmax over the last dim.

    The seed's code took `argmax(dim=2)`, which only fits token-classification logits (batch, seq, labels);
    on (batch, labels) it raises "Dimension out of range". Here a wrong shape gets a clear error instead.
    """
    logits = torch.as_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(
            f"expected logits of shape (batch, num_labels), got {tuple(logits.shape)}; "
            "for token-level logits (batch, seq, labels) pool or pick a position first"
        )
    return logits.argmax(dim=-1)  # (batch,)


@dataclass
class EvalResult:
    """Metrics of one evaluation and the per-example outputs behind them."""

    accuracy: float
    f1: float
    confusion: np.ndarray
    probs: np.ndarray
    preds: np.ndarray
    labels: np.ndarray

    def summary(self) -> dict[str, float]:
        """Accuracy and macro F1 as plain floats, for tables and report.record."""
        return {"accuracy": round(self.accuracy, 4), "f1": round(self.f1, 4)}


def class_count(labels) -> int:
    """Outputs a classifier head needs for labels 0..C-1 (at least two)."""
    return max(2, int(np.max(np.asarray(labels))) + 1)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> EvalResult:
    """Accuracy, macro F1 and the confusion matrix (scikit-learn) from labels and probabilities."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, C) with N = len(labels) = {len(labels)}, got {probs.shape}")
    preds = probs.argmax(axis=-1)
    classes = list(range(probs.shape[1]))
    return EvalResult(
        accuracy=float(accuracy_score(labels, preds)),
        f1=float(f1_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        confusion=confusion_matrix(labels, preds, labels=classes),
        probs=probs,
        preds=preds,
        labels=labels,
    )


def confident_errors(frame: pd.DataFrame, probs: np.ndarray, k: int = 10) -> pd.DataFrame:
    """The k misclassified rows the model was most sure about (text, label, prediction, confidence)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    probs = np.asarray(probs)
    preds = probs.argmax(axis=-1)
    out = frame.assign(pred=preds, confidence=probs.max(axis=-1))
    wrong = out[out["pred"] != out["label"]]
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(k).reset_index(drop=True)


def accuracy_by_bins(frame: pd.DataFrame, preds: np.ndarray, column: str, bins: list[float]) -> pd.DataFrame:
    """Accuracy and count per bin of a numeric column (for example sentence length or |rating|)."""
    correct = pd.Series(np.asarray(preds) == frame["label"].to_numpy(), index=frame.index)
    groups = pd.cut(frame[column], bins=bins)
    table = correct.groupby(groups, observed=False).agg(["mean", "size"])
    return table.rename(columns={"mean": "accuracy", "size": "n"}).reset_index()


def rank_items(
    scores: pd.DataFrame, item: str = "movie_name", score: str = "p_positive", min_count: int = 5, k: int = 10
) -> pd.DataFrame:
    """Rank items by the mean predicted positive probability of their reviews (ties broken by name).

    Items with fewer than `min_count` reviews are left out: a mean of two reviews is noise.
    """
    for column in (item, score):
        if column not in scores.columns:
            raise ValueError(f"rank_items needs a column {column!r}; found {list(scores.columns)}")
    if min_count <= 0 or k <= 0:
        raise ValueError(f"min_count and k must be positive, got min_count={min_count}, k={k}")
    table = scores.groupby(item)[score].agg(["mean", "size"]).rename(columns={"mean": score, "size": "n"})
    table = table[table["n"] >= min_count].reset_index()
    table = table.sort_values([score, item], ascending=[False, True], kind="stable")
    return table.head(k).reset_index(drop=True)
