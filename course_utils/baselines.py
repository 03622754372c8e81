"""Baselines on the same splits: majority class, TF-IDF + logistic regression, and a linear probe on frozen MiniLM
sentence embeddings (chapter 00)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from transformers import AutoConfig

from .evaluation import EvalResult, classification_metrics
from .frozen import Features, cached_features
from .modeling import resolve_model


def tfidf_pipeline(c: float = 4.0):
    """TF-IDF of word 1-2 grams (sublinear tf) into a logistic regression (scikit-learn)."""
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}; larger C means weaker regularisation")
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=c, max_iter=2000))


def tfidf_baseline(train: pd.DataFrame, test: pd.DataFrame, c: float = 4.0) -> tuple[object, EvalResult]:
    """Fit TF-IDF + logistic regression on train and evaluate it on test."""
    pipeline = tfidf_pipeline(c).fit(train["text"], train["label"])
    return pipeline, _score(pipeline, pipeline.predict_proba(test["text"]), train, test)


def _score(fitted, probs: np.ndarray, train: pd.DataFrame, test: pd.DataFrame) -> EvalResult:
    """Metrics from a scikit-learn model's (N, C_seen) probabilities, with a column for every label id (a label
    absent from the training rows gets probability 0)."""
    full = np.zeros((len(test), int(max(train["label"].max(), test["label"].max())) + 1))
    full[:, fitted.classes_] = probs
    return classification_metrics(test["label"].to_numpy(), full)


def majority_baseline(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """Accuracy of always predicting the most frequent training label."""
    majority = train["label"].mode().iloc[0]
    return float((test["label"] == majority).mean())


def mean_pooled(feats: Features) -> np.ndarray:
    """(N, H) sentence vectors: the mean of each sentence's token vectors (the pooling MiniLM was trained with)."""
    sums = np.add.reduceat(feats.flat.float().numpy(), feats.offsets[:-1].numpy(), axis=0)  # (N, H)
    return sums / feats.lengths.numpy()[:, None]


def linear_probe(
    train: pd.DataFrame, test: pd.DataFrame, c: float = 1.0, max_length: int = 64, progress: bool = False
) -> tuple[object, EvalResult]:
    """Logistic regression on frozen, mean-pooled MiniLM embeddings (all blocks frozen, cached as features)."""
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}; larger C means weaker regularisation")
    layers = AutoConfig.from_pretrained(resolve_model()).num_hidden_layers  # every block frozen: nothing trains
    x_train = mean_pooled(cached_features(train, layers, max_length=max_length, progress=progress))
    x_test = mean_pooled(cached_features(test, layers, max_length=max_length, progress=progress))
    probe = LogisticRegression(C=c, max_iter=5000).fit(x_train, train["label"])
    return probe, _score(probe, probe.predict_proba(x_test), train, test)
