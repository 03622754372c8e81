"""Classical baselines on the same splits: majority class and TF-IDF + logistic regression (chapter 00)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from .evaluation import EvalResult, classification_metrics


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
