"""Chapter 01 experiments: MinHash/LSH against exact Jaccard, leak experiment, label issues, scaling, augmentation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from course_utils import data, dataprep


def test_minhash_estimate_is_close_to_exact_jaccard():
    pairs = [("The best film of the year, by far.", "The best film of the year -- by far!"),
             ("A gorgeous, witty, seductive movie.", "A gorgeous and witty movie."),
             ("Unwatchable.", "A triumph of modern cinema.")]
    for a, b in pairs:
        m1, m2 = dataprep.minhashes([a, b])
        assert abs(m1.jaccard(m2) - dataprep.jaccard(a, b)) < 0.15  # 128 permutations: std about 0.04
    with pytest.raises(ValueError, match="shingle size must be positive"):
        dataprep.shingles("abc", 0)


def test_lsh_finds_planted_near_duplicates_and_nothing_else(movie):
    texts = list(movie["text"].iloc[:300])
    planted = [texts[5].upper() + " !", texts[17].replace(",", "")]
    pairs = dataprep.lsh_pairs(planted, texts, threshold=0.7)
    assert sorted(zip(pairs["i"], pairs["j"])) == [(0, 5), (1, 17)]
    assert dataprep.lsh_pairs(texts, threshold=0.7).empty
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        dataprep.lsh_pairs(texts, threshold=1.5)


def test_leak_experiment_measures_inflation(movie):
    base = data.subsample(movie, 1500, seed=2)
    twins = base.iloc[:600].assign(text=lambda f: f["text"].str.upper() + "!")  # a careless merge
    result = dataprep.leak_experiment(pd.concat([base, twins], ignore_index=True), seed=0)
    assert result.leaked_rows > 50 and result.test_rows_with_twin > 50
    assert result.inflation > 0.02 and result.accuracy_on_twinned_test_rows > result.accuracy_without_leak


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
    out = dataprep.augmentation_experiment(frame.iloc[:900], frame.iloc[900:], {"none": None, "EDA": dataprep.eda},
                                           n_labelled=200, seeds=(0, 1))
    assert len(out) == 4 and out["accuracy"].between(0.4, 0.9).all()


def test_rating_regression_beats_the_mean(movie):
    frame = data.subsample(movie, 3000, seed=6)
    result = dataprep.rating_regression(frame.iloc[:2400], frame.iloc[2400:])
    assert result["rmse"] < result["rmse_predict_mean"] and 0.3 < result["pearson_r"] < 0.95
