"""Chapter 06's calibration and OOD detection: checked against scikit-learn and constructions with known answers."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.covariance import EmpiricalCovariance
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from course_utils import calibration


def sampled(seed: int, n: int, classes: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits scale * z of a model whose labels are drawn from softmax(z): the right temperature is `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    p = calibration.softmax(z)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(max=classes - 1)
    return scale * z, labels


def test_softmax_is_stable_and_sums_to_one():
    logits = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    probs = calibration.softmax(logits)
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1)
    assert np.allclose(probs[1], 1 / 3)
    e = np.exp(np.array([0.0, 1.0, -1.0]) / 2)
    assert np.allclose(calibration.softmax(logits[:1], temperature=2.0)[0], e / e.sum())


def test_reliability_matches_sklearn_calibration_curve():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.3, 0.3, 0.3], 500)
    probs[:7] = np.eye(3)[[0, 1, 2, 0, 1, 2, 0]]  # confidences of exactly 1.0 (last bin)
    probs[7:9] = [[0.6, 0.4, 0.0], [0.4, 0.6, 0.0]]  # exactly on a bin edge: (lower, upper] as scikit-learn
    labels = rng.integers(0, 3, 500)
    for bins in (5, 10, 15):
        table = calibration.reliability(probs, labels, bins)
        correct = (probs.argmax(axis=1) == labels).astype(int)
        accuracy, confidence = calibration_curve(correct, probs.max(axis=1), n_bins=bins, strategy="uniform")
        assert np.allclose(table["accuracy"], accuracy) and np.allclose(table["confidence"], confidence)
        assert table["count"].sum() == 500 and np.all(table["count"] > 0)
        assert np.allclose(table["upper"] - table["lower"], 1 / bins)
        assert np.all((table["confidence"] > table["lower"] - 1e-12) & (table["confidence"] <= table["upper"]))
    assert calibration.reliability(probs, labels, 5)["upper"].iloc[-1] == 1.0


def test_ece_is_zero_when_calibrated_and_matches_a_hand_computed_case():
    # in bins 5..9 of 10, 20 examples of confidence (b + 0.5)/10 of which exactly that share is right: ECE 0
    probs, labels = [], []
    for b in range(5, 10):
        c = (b + 0.5) / 10
        right = round(20 * c)
        probs += [[c, 1 - c]] * 20
        labels += [0] * right + [1] * (20 - right)
    probs, labels = np.array(probs), np.array(labels)
    assert np.allclose(calibration.reliability(probs, labels, 10)["accuracy"], [0.55, 0.65, 0.75, 0.85, 0.95])
    assert calibration.expected_calibration_error(probs, labels, 10) == pytest.approx(0, abs=1e-12)
    # 4 examples, 10 bins: 0.92 (right) in (0.9, 1], 0.78 (wrong) in (0.7, 0.8], and 0.65, 0.62 (both right)
    # in (0.6, 0.7] at mean 0.635: ECE = 1/4 |1 - 0.92| + 1/4 |0 - 0.78| + 2/4 |1 - 0.635| = 0.3975
    probs = np.array([[0.92, 0.08], [0.22, 0.78], [0.65, 0.35], [0.38, 0.62]])
    labels = np.array([0, 0, 0, 1])
    assert calibration.expected_calibration_error(probs, labels, 10) == pytest.approx(0.3975)
    assert calibration.expected_calibration_error(probs, labels, 1) == pytest.approx(0.0075)  # |0.75 - 2.97 / 4|


def test_nll_is_the_mean_negative_log_probability_of_the_label():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 1, 0])
    assert calibration.nll(probs, labels) == pytest.approx((np.log(2) + np.log(10) - np.log(1e-12)) / 3)


def test_fit_temperature_recovers_the_temperature_and_minimises_nll():
    logits, labels = sampled(seed=1, n=20000, classes=3, scale=2.5)
    t = calibration.fit_temperature(logits, labels)
    assert abs(t - 2.5) < 0.2
    at = {f: calibration.nll(calibration.softmax(logits, t * f), labels) for f in (1, 1.1, 1 / 1.1)}
    assert at[1] <= at[1.1] and at[1] <= at[1 / 1.1]
    under_logits, under_labels = sampled(seed=2, n=20000, classes=2, scale=0.5)  # underconfident: T < 1
    assert abs(calibration.fit_temperature(under_logits, under_labels) - 0.5) < 0.05


def test_temperature_scaling_never_changes_the_prediction():
    logits, labels = sampled(seed=3, n=2000, classes=4, scale=2.0)
    t = calibration.fit_temperature(logits, labels)
    for temperature in (t, 0.05, 0.7, 20.0):
        assert np.array_equal(calibration.softmax(logits, temperature).argmax(1), logits.argmax(1))
    before = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    after = calibration.expected_calibration_error(calibration.softmax(logits, t), labels)
    assert after < before / 2  # overconfident by 2x: temperature scaling removes most of the gap


def gaussians(seed: int, n: int, ood: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two classes at -3 and +3 along the first of 16 dimensions, or an OOD cluster between them.

    The OOD cluster sits where the classes meet (so a classifier is unsure there) and 4 further along dimensions 8-15.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 16))
    if ood:
        x[:, 8:] += 4.0
    else:
        x[:, 0] += np.where(labels == 1, 3.0, -3.0)
    return x, labels


def test_ood_scores_separate_a_shifted_cluster_and_not_the_same_distribution():
    reference, labels = gaussians(0, 600)
    fresh, same, moved = gaussians(1, 300)[0], gaussians(2, 300)[0], gaussians(3, 300, ood=True)[0]
    model = LogisticRegression().fit(reference, labels)
    scorers = {
        "msp": lambda x: calibration.msp_score(model.predict_proba(x)),
        "knn": lambda x: calibration.knn_score(reference, x, k=10),
        "mahalanobis": lambda x: calibration.mahalanobis_score(reference, labels, x),
    }
    for name, score in scorers.items():
        assert calibration.auroc(score(fresh), score(moved)) > 0.9, name
        assert abs(calibration.auroc(score(fresh), score(same)) - 0.5) < 0.1, name
    # far out along the class direction (x 4): the classifier is MORE confident and the direction (cosine) barely
    # changes, so MSP and k-NN call these inputs more in-distribution than real ones; Mahalanobis sees the distance
    far = fresh.copy()
    far[:, 0] *= 4.0
    assert calibration.auroc(scorers["msp"](fresh), scorers["msp"](far)) < 0.5
    assert calibration.auroc(scorers["knn"](fresh), scorers["knn"](far)) < 0.5
    assert calibration.auroc(scorers["mahalanobis"](fresh), scorers["mahalanobis"](far)) > 0.9


def test_knn_score_matches_sklearn_and_is_zero_on_the_reference():
    rng = np.random.default_rng(4)
    reference, features = rng.normal(0, 1, (200, 8)), rng.normal(0, 1, (2100, 8))  # > one chunk of 1024
    for k in (1, 7, 200):
        nearest = NearestNeighbors(n_neighbors=k, metric="cosine").fit(reference)
        expected = -nearest.kneighbors(features)[0][:, -1]
        assert np.allclose(calibration.knn_score(reference, features, k), expected, atol=1e-10)
    assert np.allclose(calibration.knn_score(reference, reference[:20], k=1), 0, atol=1e-12)  # itself, up to rounding
    assert np.allclose(calibration.knn_score(reference, 3 * reference[:5], k=1), 0)  # cosine ignores the length


def test_mahalanobis_score_matches_sklearn_and_works_with_more_dimensions_than_vectors(monkeypatch):
    rng = np.random.default_rng(5)
    reference, labels, features = rng.normal(0, 1, (400, 6)), rng.integers(0, 3, 400), rng.normal(0, 1, (50, 6))
    reference[labels == 2] += 2.0
    means = np.stack([reference[labels == c].mean(axis=0) for c in range(3)])
    tied = EmpiricalCovariance(assume_centered=True).fit(reference - means[labels])
    expected = -np.min([tied.mahalanobis(features - m) for m in means], axis=0)
    monkeypatch.setattr(calibration, "MAHALANOBIS_RIDGE", 0.0)
    assert np.allclose(calibration.mahalanobis_score(reference, labels, features), expected)
    monkeypatch.undo()
    assert np.allclose(calibration.mahalanobis_score(reference, labels, features), expected, rtol=0.02)
    wide, wide_labels = rng.normal(0, 1, (30, 100)), np.arange(30) % 2  # dim > n: the covariance is singular
    shifted = rng.normal(0, 1, (40, 100)) + 1.0
    scores = calibration.mahalanobis_score(wide, wide_labels, np.r_[rng.normal(0, 1, (40, 100)), shifted])
    assert np.all(np.isfinite(scores)) and calibration.auroc(scores[:40], scores[40:]) > 0.9


def test_auroc_counts_in_distribution_as_positive():
    assert calibration.auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert calibration.auroc([0.1, 0.2], [0.9, 0.8]) == 0.0
    assert calibration.auroc([0.5, 0.5], [0.5]) == 0.5


def test_refusal_threshold_keeps_at_least_the_asked_share():
    scores = np.random.default_rng(6).normal(0, 1, 999)
    for keep in (0.5, 0.9, 0.95, 0.999, 1.0):
        threshold = calibration.refusal_threshold(scores, keep)
        kept = np.mean(scores >= threshold)
        assert keep <= kept <= keep + 2 / len(scores), (keep, kept)
    assert calibration.refusal_threshold(scores, 1.0) == scores.min()


def test_plot_reliability_draws_each_table_and_the_diagonal():
    logits, labels = sampled(seed=7, n=500, classes=2, scale=2.0)
    tables = {
        "before": calibration.reliability(calibration.softmax(logits), labels),
        "after": calibration.reliability(calibration.softmax(logits, 2.0), labels),
    }
    ax = calibration.plot_reliability(tables)
    try:
        lines = ax.get_lines()
        assert len(lines) == 3 and lines[0].get_linestyle() == "--"
        assert np.allclose(lines[1].get_ydata(), tables["before"]["accuracy"])
        assert [t.get_text() for t in ax.get_legend().get_texts()][1:] == ["before", "after"]
    finally:
        plt.close(ax.figure)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: calibration.softmax(np.zeros(3)), r"logits must be 2-D \(N, C\), got shape \(3,\)"),
        (lambda: calibration.softmax(np.array([[np.nan, 0.0]])), "logits must be finite"),
        (lambda: calibration.softmax(np.zeros((2, 2)), 0.0), "temperature must be > 0, got 0.0"),
        (lambda: calibration.softmax(np.zeros((2, 2)), -1), "temperature must be > 0, got -1"),
        (lambda: calibration.reliability(np.full(4, 0.5), np.zeros(4, int)), "probs must be a non-empty 2-D array"),
        (lambda: calibration.reliability(np.zeros((0, 2)), np.zeros(0, int)), "probs must be a non-empty 2-D"),
        (lambda: calibration.reliability(np.full((2, 2), 2.0), np.zeros(2, int)), r"probs must lie in \[0, 1\]"),
        (lambda: calibration.reliability(np.full((3, 2), 0.5), np.zeros(2, int)), "one label per row of probs"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.zeros((2, 1), int)), "labels must be 1-D"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.zeros(2)), "integer class ids, got dtype float"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.array([0, 2])), r"labels must lie in \[0, 2\)"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.array([-1, 0])), "got -1 to 0"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.zeros(2, int), 0), "bins must be a positive"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.zeros(2, int), 2.5), "bins must be a positive"),
        (lambda: calibration.reliability(np.full((2, 2), 0.5), np.zeros(2, int), True), "bins must be a positive"),
        (lambda: calibration.expected_calibration_error(np.full((2, 2), 0.5), np.zeros(2, int), -3), "got -3"),
        (lambda: calibration.nll(np.full((2, 2), 0.5), np.array([0, 5])), r"labels must lie in \[0, 2\)"),
        (lambda: calibration.fit_temperature(np.zeros((1, 2)), np.zeros(1, int)), "at least 2 examples, got 1"),
        (lambda: calibration.fit_temperature(np.zeros((3, 2)), np.array([0, 1, 2])), r"labels must lie in \[0, 2\)"),
        (lambda: calibration.fit_temperature(np.zeros((3, 2)), np.zeros(2, int)), "one label per row of logits"),
        (lambda: calibration.fit_temperature(np.zeros(3), np.zeros(3, int)), "logits must be 2-D"),
        (lambda: calibration.msp_score(np.full(3, 0.5)), "probs must be a non-empty 2-D array"),
        (lambda: calibration.knn_score(np.ones((5, 3)), np.ones((2, 3)), 0), r"k must be an integer in \[1, 5\]"),
        (lambda: calibration.knn_score(np.ones((5, 3)), np.ones((2, 3)), 6), "got 6"),
        (lambda: calibration.knn_score(np.ones((5, 3)), np.ones((2, 4))), "reference has 3 dimensions but features 4"),
        (lambda: calibration.knn_score(np.ones(5), np.ones((2, 4))), "must be 2-D"),
        (lambda: calibration.knn_score(np.ones((0, 3)), np.ones((2, 3))), "reference non-empty"),
        (
            lambda: calibration.mahalanobis_score(np.ones((4, 3)), np.zeros(3, int), np.ones((2, 3))),
            r"one label per reference row \(4\)",
        ),
        (
            lambda: calibration.mahalanobis_score(np.ones((4, 3)), np.zeros(4, int), np.ones((2, 3))),
            "do not vary within their classes",
        ),
        (lambda: calibration.auroc([], [0.1]), "got 0 and 1"),
        (lambda: calibration.auroc([0.1], []), "got 1 and 0"),
        (lambda: calibration.refusal_threshold([0.1, 0.2], 0.0), r"keep must be in \(0, 1\], got 0.0"),
        (lambda: calibration.refusal_threshold([0.1, 0.2], 1.5), r"keep must be in \(0, 1\], got 1.5"),
        (lambda: calibration.refusal_threshold([], 0.9), "in_scores is empty"),
        (lambda: calibration.plot_reliability({}), "tables is empty"),
        (lambda: calibration.plot_reliability({"x": calibration.pd.DataFrame({"a": [1]})}), "lacks confidence"),
    ],
)
def test_bad_inputs_get_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)
