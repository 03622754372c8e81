"""Plots the notebooks share: training curves, confusion matrices, bar charts (chapter 00)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay


def training_curve(history: list[dict], curve: list[list[float]] | None = None, ax=None):
    """Training loss (every few steps if `curve` is given, else per epoch) and validation accuracy per epoch."""

    if not history:
        raise ValueError("history is empty; train for at least one epoch first")
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    if curve:
        steps, losses = zip(*curve, strict=True)
        ax.plot(steps, losses, "-", color="tab:blue", label="train loss (mean of 10 steps)")
    else:
        ax.plot([row["step"] for row in history], [row["train_loss"] for row in history], "o-", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot([row["step"] for row in history], [row["val_accuracy"] for row in history], "s--", color="tab:orange")
    for row in history:
        twin.annotate(
            f"epoch {row['epoch']}: {row['val_accuracy']:.3f}",
            (row["step"], row["val_accuracy"]),
            textcoords="offset points",
            xytext=(-60, -14),
            fontsize=8,
            color="tab:orange",
        )
    twin.set_ylabel("validation accuracy", color="tab:orange")
    ax.set_title("Fine-tuning")
    return ax


def confusion(matrix: np.ndarray, label_names: list[str], ax=None, title: str = "Confusion matrix"):
    """A confusion matrix with counts (scikit-learn's display)."""
    ax = ax or plt.subplots(figsize=(3.6, 3.2))[1]
    ConfusionMatrixDisplay(matrix, display_labels=label_names).plot(ax=ax, colorbar=False)
    ax.set_title(title)
    return ax


def bars(values: dict[str, float], ax=None, title: str = "", ylabel: str = "accuracy", ref: float | None = None):
    """A labelled bar chart, with an optional dashed reference line (for example chance level)."""

    ax = ax or plt.subplots(figsize=(5, 3))[1]
    names = list(values)
    bars_ = ax.bar(names, [values[n] for n in names], color="tab:blue")
    ax.bar_label(bars_, fmt="%.3f")
    ax.margins(y=0.12)
    if ref is not None:
        ax.axhline(ref, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def histogram(values, bins: int = 30, ax=None, title: str = "", xlabel: str = "", mark: float | None = None):
    """A histogram with an optional vertical marker (for example the chosen max length)."""

    ax = ax or plt.subplots(figsize=(5, 3))[1]
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
    if mark is not None:
        ax.axvline(mark, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return ax
