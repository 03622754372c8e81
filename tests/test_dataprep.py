"""Chapter 01 experiments: MinHash/LSH against exact Jaccard, leak experiment and its random-removal control, label
issues, scaling, augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from course_utils import data, dataprep
from course_utils.baselines import tfidf_baseline


def test_minhash_estimate_is_close_to_exact_jaccard():
    pairs = [
        ("The best film of the year, by far.", "The best film of the year -- by far!"),
        ("A gorgeous, witty, seductive movie.", "A gorgeous and witty movie."),
        ("Unwatchable.", "A triumph of modern cinema."),
    ]
    for a, b in pairs:
        m1, m2 = dataprep.minhashes([a, b])
        assert abs(m1.jaccard(m2) - dataprep.jaccard(a, b)) < 0.15  # 128 permutations: std about 0.04
    with pytest.raises(ValueError, match="shingle size must be positive"):
        dataprep.shingles("abc", 0)


def test_lsh_finds_planted_near_duplicates_and_nothing_else(movie):
    texts = list(movie["text"].iloc[:300])
    planted = [texts[5].upper() + " !", texts[17].replace(",", "")]
    pairs = dataprep.lsh_pairs(planted, texts, threshold=0.7)
    assert sorted(zip(pairs["i"], pairs["j"], strict=True)) == [(0, 5), (1, 17)]
    assert dataprep.lsh_pairs(texts, threshold=0.7).empty
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        dataprep.lsh_pairs(texts, threshold=1.5)


def test_leak_experiment_measures_inflation(movie):
    base = data.subsample(movie, 1500, seed=2)
    twins = base.iloc[:600].assign(text=lambda f: f["text"].str.upper() + "!")  # a careless merge
    result = dataprep.leak_experiment(pd.concat([base, twins], ignore_index=True), seed=0, control_seeds=(0, 1))
    assert result.leaked_rows > 50 and result.test_rows_with_twin > 50
    assert result.inflation > 0.02 and result.accuracy_on_twinned_test_rows > result.accuracy_without_leak
    assert len(result.accuracy_random_removal) == 2
    # random rows keep most twins: removing them costs less than removing the leaked rows
    assert min(result.accuracy_random_removal) > result.accuracy_without_leak + 0.01, result


def test_exact_jaccard_pairs_match_the_pairwise_definition(movie):
    texts = list(movie["text"].iloc[:80])
    texts += [texts[3] + " !", texts[10].replace(",", "").upper(), " ".join(texts[20].split()[:-2])]
    words = texts[30].split()
    texts += [" ".join(words[:-cut]) for cut in range(1, 8)]  # Jaccard with texts[30] falls through the threshold
    brute = {
        (i, j)
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if dataprep.jaccard(texts[i], texts[j]) >= 0.6
    }
    exact = dataprep.exact_jaccard_pairs(texts, threshold=0.6, chunk=7)  # chunks that do not divide the rows
    assert set(zip(exact["i"], exact["j"], strict=True)) == brute and len(brute) >= 3
    assert any(dataprep.jaccard(texts[30], t) < 0.6 for t in texts[83:]), "some truncations fall below"
    assert exact["jaccard"].to_numpy() == pytest.approx(
        [dataprep.jaccard(texts[i], texts[j]) for i, j in zip(exact["i"], exact["j"], strict=True)]
    )
    across = dataprep.exact_jaccard_pairs(texts[80:83], texts[:80], threshold=0.6)
    brute_across = {(i, j) for i in range(3) for j in range(80) if dataprep.jaccard(texts[80 + i], texts[j]) >= 0.6}
    assert set(zip(across["i"], across["j"], strict=True)) == brute_across and {(0, 3), (1, 10)} <= brute_across
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        dataprep.exact_jaccard_pairs(texts, threshold=0)


def test_lsh_miss_rate_counts_exact_pairs_lsh_did_not_return():
    exact = pd.DataFrame({"i": [0, 0, 1, 2], "j": [1, 2, 3, 3], "jaccard": [0.9, 0.8, 0.75, 0.7]})
    found = pd.DataFrame({"i": [0, 2, 5], "j": [1, 3, 6], "jaccard": [0.9, 0.7, 0.95]})  # (5, 6) is not exact
    assert dataprep.lsh_miss_rate(exact, found) == pytest.approx(0.5)
    assert dataprep.lsh_miss_rate(exact, exact) == 0.0
    with pytest.raises(ValueError, match="no exact pairs"):
        dataprep.lsh_miss_rate(exact.iloc[:0], found)


def test_random_rows_like_matches_count_and_labels():
    frame = pd.DataFrame(
        {"text": [f"t{i}" for i in range(200)], "label": [i % 3 == 0 for i in range(200)]}, index=range(1000, 1200)
    ).astype({"label": int})
    drop = list(range(1000, 1060))  # 20 of label 1, 40 of label 0: a draw from all rows would hit some of them
    rows = dataprep.random_rows_like(frame, drop, seed=0)
    assert len(rows) == len(drop) and rows.is_unique and rows.isin(frame.index).all()
    assert not rows.isin(drop).any(), "the control removes other rows than the ones it stands in for"
    assert frame.loc[rows, "label"].value_counts().to_dict() == frame.loc[drop, "label"].value_counts().to_dict()
    assert rows.equals(dataprep.random_rows_like(frame, drop, seed=0))
    assert set(rows) != set(dataprep.random_rows_like(frame, drop, seed=1))
    assert len(dataprep.random_rows_like(frame, [], seed=0)) == 0
    with pytest.raises(ValueError, match="rows not in the frame"):
        dataprep.random_rows_like(frame, [5], seed=0)
    too_many = list(frame.index[(frame["label"] == 0).to_numpy()][:67]) + [1000]  # 67 of the 133 label-0 rows
    with pytest.raises(ValueError, match="only 66 others remain"):
        dataprep.random_rows_like(frame, too_many, seed=0)


def test_lsh_miss_probability_follows_the_s_curve():
    j = np.linspace(0, 1, 11)
    miss = dataprep.lsh_miss_probability(j, threshold=0.7)
    assert miss[0] == 1.0 and miss[-1] == 0.0 and (np.diff(miss) <= 0).all()
    assert 0.3 < dataprep.lsh_miss_probability(0.7) < 0.7 and dataprep.lsh_miss_probability(0.9) < 0.01
    assert dataprep.lsh_miss_probability(0.8, threshold=0.9) > dataprep.lsh_miss_probability(0.8, threshold=0.7)


def test_random_removal_control_removes_exactly_n_rows(movie):
    frame = data.subsample(movie, 1500, seed=7)
    train, test = frame.iloc[:1200], frame.iloc[1200:]
    drop = list(train.index[:150])
    control = dataprep.random_removal_control(train, test, drop, seeds=(0, 1, 2))
    assert list(control["seed"]) == [0, 1, 2] and (control["train rows"] == 1200 - 150).all()
    assert control["accuracy"].nunique() > 1, "different seeds remove different rows"
    nothing = dataprep.random_removal_control(train, test, [], seeds=(0,))
    assert nothing["accuracy"].iloc[0] == tfidf_baseline(train, test)[1].accuracy


def test_label_issues_find_flipped_labels(movie):
    frame = data.subsample(movie, 2000, seed=3).reset_index(drop=True)
    flipped = frame.index[:60]
    noisy = frame.assign(label=np.where(frame.index.isin(flipped), 1 - frame["label"], frame["label"]))
    flagged = dataprep.label_issues(noisy, dataprep.out_of_fold_probs(noisy))
    recall = np.isin(flipped, flagged.index).mean()
    assert recall > 0.5, recall
    assert (np.diff(flagged["p_given_label"].to_numpy()) >= -1e-12).all(), "most suspicious first"


def test_scaler_table_shows_the_leak():
    train, test = pd.Series([0.0, 1.0, 2.0, 3.0]), pd.Series([-1.0, 4.0])
    table = dataprep.scaler_leak_table(train, test).set_index(["scaler", "fitted on"])
    assert table.loc[("min-max", "train only"), "test max"] == pytest.approx(4 / 3)
    assert table.loc[("min-max", "train + test (leak)"), "test max"] == pytest.approx(1.0)


def test_augmenters_are_reproducible_and_keep_words():
    text = "a gorgeous witty seductive movie about love"
    a = dataprep.eda(text, np.random.default_rng(0))
    assert a == dataprep.eda(text, np.random.default_rng(0))
    assert set(a.split()) <= set(text.split()) and a
    assert sorted(dataprep.random_swap(text, np.random.default_rng(1), 3).split()) == sorted(text.split())
    assert dataprep.random_deletion("one", np.random.default_rng(0), 0.9) == "one"
    with pytest.raises(ValueError, match="deletion probability"):
        dataprep.random_deletion(text, np.random.default_rng(0), 1.0)
    swapped = dataprep.substitute("a good movie", {"good": ["great"]}, np.random.default_rng(0), p=1.0)
    assert swapped == "a great movie"


def test_embedding_neighbours_are_related_words(tokenizer):
    from course_utils import modeling

    near = dataprep.embedding_neighbours(["funny", "movie", "zzzqqq"], tokenizer, modeling.load_model(2), k=5)
    assert "zzzqqq" not in near and "hilarious" in near["funny"] and "film" in near["movie"]


def test_backtranslation_refuses_offline(monkeypatch):
    monkeypatch.setenv("COURSE_MODE", "offline")
    with pytest.raises(ValueError, match="COURSE_MODE=online"):
        dataprep.backtranslate(["hello"])


def test_group_split_comparison_never_shares_a_movie(movie):
    named = dataprep.attach_movie_names(data.subsample(movie, 2000, seed=4))
    assert len(named) > 1800 and named["movie_name"].nunique() > 300
    table = dataprep.split_comparison(named, "movie_name", seeds=(0,))
    assert set(table["split"]) == {"random", "by movie_name"}


def test_augmentation_experiment_shape(movie):
    frame = data.subsample(movie, 1200, seed=5)
    out = dataprep.augmentation_experiment(
        frame.iloc[:900], frame.iloc[900:], {"none": None, "EDA": dataprep.eda}, n_labelled=200, seeds=(0, 1)
    )
    assert len(out) == 4 and out["accuracy"].between(0.4, 0.9).all()


def test_rating_regression_beats_the_mean(movie):
    frame = data.subsample(movie, 3000, seed=6)
    result = dataprep.rating_regression(frame.iloc[:2400], frame.iloc[2400:])
    assert result["rmse"] < result["rmse_predict_mean"] and 0.3 < result["pearson_r"] < 0.95


def test_file_checks_run_chapter_01_on_a_learners_file(movie):
    frame = data.subsample(movie, 400, seed=1)[["id", "text", "label"]].reset_index(drop=True)
    frame.loc[0, "text"] = "Call me at jane.doe@example.com about this film, it is great."  # PII
    frame.loc[1, "label"] = 1 - frame.loc[1, "label"]  # a label error among others
    splits = data.splits_from_frame(frame, ["negative", "positive"], source="mine.csv")
    summary, flagged = dataprep.file_checks(frame, splits)
    values = summary["value"]
    assert values["rows"] == 400 and values["PII: EMAIL replaced"] == 1
    assert 0 < values["label issues flagged (confident learning)"] == len(flagged) < len(splits.train)
    assert set(flagged["id"]) <= set(splits.train["id"]) and flagged["p_given_label"].is_monotonic_increasing
    tiny = data.splits_from_frame(frame.head(40), ["negative", "positive"], source="tiny.csv")
    summary, flagged = dataprep.file_checks(frame.head(40), tiny, folds=50)
    assert str(summary.loc["label issues", "value"]).startswith("skipped") and flagged.empty
