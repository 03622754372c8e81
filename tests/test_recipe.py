"""The adaptive recipe, the diagnosis after training, the data-health report and class-weighted training."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from course_utils import data, datahealth, modeling, recipe, store
from course_utils.evaluation import classification_metrics


def own_splits(texts: list[str], labels: list[int], names: list[str]) -> data.Splits:
    frame = pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "label": labels})
    return data.Splits(frame, frame.head(4), frame.head(4), label_names=names, source="mine.csv")


def test_the_movie_data_keeps_its_recipe_and_its_cache_key(movie):
    splits = data.movie_splits()
    for fast in (True, False):
        choice = recipe.adapt_recipe(splits, fast=fast)
        assert choice.config == modeling.default_config(fast) and list(choice.table().index) == ["recipe"]
    cfg = modeling.default_config(True)
    # class_weights=None is left out of the key, so checkpoints trained before the field existed still load
    assert store.key(cfg) == store.key(dataclasses.replace(cfg, class_weights=None))
    assert store.key(cfg) != store.key(dataclasses.replace(cfg, class_weights=(1.0, 2.0)))

    fields = [(f.name, f.type, f.default) for f in dataclasses.fields(cfg) if f.name != "class_weights"]
    old = dataclasses.make_dataclass("TrainConfig", fields, frozen=True)  # the fields before class_weights existed
    old.__qualname__ = "TrainConfig"  # store.key hashes the qualified name
    legacy = old(**{name: getattr(cfg, name) for name, _, _ in fields})
    assert store.key(legacy) == store.key(cfg)


def test_long_imbalanced_data_gets_a_longer_length_weights_and_more_epochs(tokenizer):
    rng = np.random.default_rng(0)
    words = "the service was slow and the refund never came but support answered politely".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(60, 90)))) for _ in range(200)]
    labels = [0] * 150 + [1] * 50
    choice = recipe.adapt_recipe(
        own_splits(texts, labels, ["ok", "complaint"]), fast=False, tokenizer=tokenizer, gpu=True
    )
    cfg = choice.config
    lengths = np.array(modeling.token_lengths(tokenizer, texts))
    assert cfg.max_length % recipe.LENGTH_STEP == 0 and (lengths <= cfg.max_length).mean() >= 0.95
    assert cfg.max_length - recipe.LENGTH_STEP < np.quantile(lengths, 0.95)  # the smallest such multiple
    assert cfg.class_weights == pytest.approx((200 / 300, 200 / 100))  # sklearn's "balanced": n / (C * count)
    assert cfg.epochs == recipe.MAX_EPOCHS[False] and cfg.lr == recipe.OWN_LR  # 7 steps per epoch: the most epochs
    assert set(choice.table().index) == {"max_length", "epochs", "lr", "class_weights"}
    cpu = recipe.adapt_recipe(own_splits(texts, labels, ["ok", "complaint"]), fast=True, tokenizer=tokenizer, gpu=False)
    assert cpu.config.max_length == min(recipe.CPU_LENGTH_CAP[True], cfg.max_length)
    assert "capped" in cpu.table().loc["max_length", "why"] or cpu.config.max_length == cfg.max_length
    mine = recipe.adapt_recipe(own_splits(texts, labels, ["ok", "complaint"]), max_length=48, tokenizer=tokenizer)
    assert mine.config.max_length == 48 and mine.table().loc["max_length", "why"] == "your choice"
    with pytest.raises(ValueError, match="max_length must be an integer"):
        recipe.adapt_recipe(own_splits(texts, labels, ["ok", "complaint"]), max_length=0, tokenizer=tokenizer)


def test_balanced_classes_are_not_weighted_and_lengths_are_bounded(tokenizer):
    texts = [f"short text number {i}" for i in range(40)]
    choice = recipe.adapt_recipe(own_splits(texts, [0, 1] * 20, ["a", "b"]), fast=True, tokenizer=tokenizer)
    assert choice.config.class_weights is None and choice.config.max_length == recipe.MIN_LENGTH
    assert recipe.length_for(np.array([5000]), limit=512) == 512
    with pytest.raises(ValueError, match="no training example"):
        recipe.balanced_weights(np.array([0, 0, 2]), 3)


def result(preds, labels, n_classes=2):
    probs = np.eye(n_classes)[np.asarray(preds)]
    return classification_metrics(np.asarray(labels), probs)


def test_a_model_predicting_one_class_is_never_silent(tokenizer):
    labels = np.array([0] * 65 + [1] * 35)
    train = pd.DataFrame({"text": ["a fine product"] * 65 + ["broke after a day"] * 35, "label": labels})
    cfg = modeling.TrainConfig(train_size=800)
    history = [{"train_loss": 0.69, "val_accuracy": 0.65}, {"train_loss": 0.68, "val_accuracy": 0.65}]
    tfidf = result(labels, labels)  # TF-IDF gets all right
    with pytest.warns(UserWarning, match="predicts 'good' for every test example"):
        diagnosis = recipe.diagnose(
            result(np.zeros(100, int), labels), tfidf, 0.65, train, cfg, history, ["good", "bad"], tokenizer
        )
    assert not diagnosis.ok
    found = " ".join(diagnosis.findings)
    assert "near chance" in found and "not weighted" in found and "1.9x" in found
    assert any("class weights" in r for r in diagnosis.remedies)
    assert "Verdict: predicts 'good'" in diagnosis.text()


def test_the_verdict_follows_the_paired_standard_error(tokenizer):
    labels = np.array([0, 1] * 200)
    train = pd.DataFrame({"text": ["x y z"] * 400, "label": labels})
    cfg = modeling.TrainConfig()

    def wrong(start: int, k: int) -> np.ndarray:  # predictions wrong on examples start .. start+k-1
        return np.where((np.arange(400) >= start) & (np.arange(400) < start + k), 1 - labels, labels)

    kwargs = dict(train=train, cfg=cfg, history=[], label_names=["a", "b"], tokenizer=tokenizer, warn=False)
    verdict = lambda a, b: recipe.diagnose(result(a, labels), result(b, labels), 0.5, **kwargs).verdict  # noqa: E731
    assert verdict(wrong(0, 20), wrong(300, 80)).startswith("beats")  # +0.15, standard error about 0.025
    assert verdict(wrong(0, 80), wrong(300, 82)).startswith("ties")  # +0.005, standard error about 0.03
    assert verdict(wrong(0, 80), wrong(300, 20)).startswith("loses")
    # the same +0.005 on nested errors (the model right wherever TF-IDF is) is outside a much smaller error
    assert verdict(wrong(0, 80), wrong(0, 82)).startswith("beats")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that beats the baselines raises no warning
        assert recipe.diagnose(result(wrong(0, 20), labels), result(wrong(300, 80), labels), 0.5, **kwargs).ok
    with pytest.raises(ValueError, match="same test split"):
        recipe.diagnose(result(wrong(0, 20), labels), result(wrong(0, 20)[:10], labels[:10]), 0.5, **kwargs)


def test_class_weights_change_the_loss_and_are_validated(tiny_splits, tokenizer):
    model = modeling.load_model(num_labels=2)
    batch = next(modeling.batches(tiny_splits.train.head(8), tokenizer, 8, 32))
    plain = modeling.loss_function(modeling.TrainConfig(), model, torch.device("cpu"))(batch)
    even = modeling.loss_function(modeling.TrainConfig(class_weights=(2.0, 2.0)), model, torch.device("cpu"))(batch)
    skew = modeling.loss_function(modeling.TrainConfig(class_weights=(1.0, 9.0)), model, torch.device("cpu"))(batch)
    assert torch.allclose(plain, even, atol=1e-6)  # weights are normalised: equal weights change nothing
    assert not torch.allclose(plain, skew, atol=1e-4)
    with pytest.raises(ValueError, match="one weight per class"):
        modeling.loss_function(modeling.TrainConfig(class_weights=(1.0, 1.0, 1.0)), model, torch.device("cpu"))
    with pytest.raises(ValueError, match="one positive number per class"):
        modeling.TrainConfig(class_weights=(1.0, -1.0))


def test_health_report_finds_what_a_real_export_holds(tokenizer):
    texts = [
        "A perfectly ordinary sentence about the product and the service.",
        "a perfectly ordinary sentence about the product and the service",  # exact duplicate after normalising
        "The cafÃ© was great and the staff were kind to us.",  # mojibake
        "Ok",  # a fragment
        "Das Essen war kalt und der Kellner war unfreundlich zu uns.",
        "Это был лучший отель, в котором мы когда-либо останавливались.",
        "Great value,<br/>would buy again &amp; recommend to the family.",
        "Bad\x07 packaging and the item arrived broken in the box.",
    ] * 3
    labels = [0, 1, 0, 1, 0, 1, 0, 0] * 3
    report = datahealth.health_report(pd.DataFrame({"text": texts, "label": labels}), ["neg", "pos"], tokenizer)
    text = report.text()
    for expected in (
        "different labels",
        "mojibake",
        "fewer than 3 words",
        "HTML",
        "control characters",
        "may not be English",
        "imbalanced",
        "only 9 rows",
    ):
        assert expected in text, expected
    assert report.table.loc["duplicates with different labels", "value"] >= 1
    assert list(report.classes.index) == ["neg", "pos"] and report.classes["rows"].sum() == len(texts)
    with pytest.raises(ValueError, match="needs a 'label' column"):
        datahealth.health_report(pd.DataFrame({"text": ["x"]}))
    clean = datahealth.health_report(
        pd.DataFrame({"text": [f"the item number {i} works well" for i in range(400)], "label": [0, 1] * 200})
    )
    assert clean.problems == [] and "No problem found" in clean.text()


def test_every_notebook_says_which_data_it_runs_on(tmp_path, monkeypatch, capsys):
    from course_harness import notebooks
    from course_utils import config, owndata

    root = config.repo_root()
    stems = {p.stem for p in notebooks.notebook_files(root) if p.parent.name == "notebooks"}
    assert stems == set(owndata.YOUR_DATA) | set(owndata.MOVIE_ONLY), "list every chapter in owndata"
    for stem in stems:
        cells = notebooks.read_notebook(root / "notebooks" / f"{stem}.ipynb").cells
        source = "".join(c.source for c in cells if c.cell_type == "code")
        calls = source.count(f'owndata.chapter_splits("{stem}")') + source.count(f'owndata.announce("{stem}")')
        assert calls == 1, f"{stem} must call owndata.chapter_splits or owndata.announce once, with its own name"
        assert "data.course_splits()" not in source, f"{stem}: take the splits from owndata.chapter_splits"
    mine = tmp_path / "mine.csv"
    pd.DataFrame({"text": [f"ticket {i} about the printer" for i in range(40)], "label": ["a", "b"] * 20}).to_csv(
        mine, index=False
    )
    monkeypatch.setenv("COURSE_DATA", str(mine))
    assert owndata.chapter_splits("00_finetuning").source == str(mine)
    assert owndata.chapter_splits("06_domain_shift").source == "movie"
    out = capsys.readouterr().out
    assert f"your file {mine}" in out and "not your file mine.csv: its domains" in out
    with pytest.raises(ValueError, match="unknown chapter '04_compresion'"):
        owndata.chapter_splits("04_compresion")
