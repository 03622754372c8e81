"""Evaluation helpers against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from course_utils import baselines, evaluation


def test_predictions_from_logits_uses_the_label_dimension():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0]])
    assert evaluation.predictions_from_logits(logits).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\(batch, num_labels\).*got \(2, 4, 2\)"):
        evaluation.predictions_from_logits(torch.zeros(2, 4, 2))
    with pytest.raises(IndexError):
        logits.argmax(dim=2)  # the seed's bug


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = rng.dirichlet([1, 1], 200)
    result = evaluation.classification_metrics(labels, probs)
    preds = probs.argmax(1)
    assert result.accuracy == pytest.approx(accuracy_score(labels, preds))
    assert result.f1 == pytest.approx(f1_score(labels, preds, average="macro"))
    assert result.confusion.sum() == 200 and np.trace(result.confusion) == (preds == labels).sum()
    with pytest.raises(ValueError, match="probs must be"):
        evaluation.classification_metrics(labels, probs[:10])


def test_rank_items_and_confident_errors():
    scores = pd.DataFrame(
        {"movie_name": list("aaabbbbbcc"), "p_positive": [0.9, 0.9, 0.9, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1]}
    )
    ranked = evaluation.rank_items(scores, min_count=3, k=5)
    assert ranked["movie_name"].tolist() == ["a", "b"] and ranked["n"].tolist() == [3, 5]
    with pytest.raises(ValueError, match="needs a column 'movie'"):
        evaluation.rank_items(scores, item="movie")
    frame = pd.DataFrame({"text": ["x", "y", "z"], "label": [0, 1, 1]})
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    assert evaluation.confident_errors(frame, probs, k=5)["text"].tolist() == ["y", "x"]


def test_tfidf_and_majority_baselines(movie):
    shuffled = movie.sample(frac=1.0, random_state=0)
    train, test = shuffled.iloc[:3000], shuffled.iloc[3000:4000]
    _, result = baselines.tfidf_baseline(train, test)
    assert 0.65 < result.accuracy < 0.85
    assert 0.45 < baselines.majority_baseline(train, test) < 0.55
    with pytest.raises(ValueError, match="C must be > 0"):
        baselines.tfidf_pipeline(0)
