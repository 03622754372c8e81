"""Baselines on the same splits: majority class, TF-IDF + logistic regression, and a linear probe on frozen MiniLM
sentence embeddings (chapter 00)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from .evaluation import EvalResult, classification_metrics
from .frozen import Features, cached_features


def tfidf_pipeline(c: float = 4.0):
    """TF-IDF of word 1-2 grams (sublinear tf) into a logistic regression (scikit-learn)."""
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}; larger C means weaker regularisation")
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                         LogisticRegression(C=c, max_iter=2000))


def tfidf_baseline(train: pd.DataFrame, test: pd.DataFrame, c: float = 4.0) -> tuple[object, EvalResult]:
    """Fit TF-IDF + logistic regression on train and evaluate it on test."""
    pipeline = tfidf_pipeline(c).fit(train["text"], train["label"])
    probs = pipeline.predict_proba(test["text"])  # (N, C), columns in sorted label order
    full = np.zeros((len(test), int(max(train["label"].max(), test["label"].max())) + 1))
    full[:, pipeline.classes_] = probs
    return pipeline, classification_metrics(test["label"].to_numpy(), full)


def majority_baseline(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """Accuracy of always predicting the most frequent training label."""
    majority = train["label"].mode().iloc[0]
    return float((test["label"] == majority).mean())


def mean_pooled(feats: Features) -> np.ndarray:
    """(N, H) sentence vectors: the mean of each sentence's token vectors (the pooling MiniLM was trained with)."""
    sums = np.add.reduceat(feats.flat.float().numpy(), feats.offsets[:-1].numpy(), axis=0)  # (N, H)
    return sums / feats.lengths.numpy()[:, None]


def linear_probe(train: pd.DataFrame, test: pd.DataFrame, c: float = 1.0, max_length: int = 64,
                 progress: bool = False) -> tuple[object, EvalResult]:
    """Logistic regression on frozen, mean-pooled MiniLM embeddings (all blocks frozen, cached as features)."""
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}; larger C means weaker regularisation")
    layers = 6  # every block of the pretrained encoder: nothing of it trains
    x_train = mean_pooled(cached_features(train, layers, max_length=max_length, progress=progress))
    x_test = mean_pooled(cached_features(test, layers, max_length=max_length, progress=progress))
    probe = LogisticRegression(C=c, max_iter=5000).fit(x_train, train["label"])
    full = np.zeros((len(test), int(max(train["label"].max(), test["label"].max())) + 1))
    full[:, probe.classes_] = probe.predict_proba(x_test)
    return probe, classification_metrics(test["label"].to_numpy(), full)
