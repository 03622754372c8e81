"""Model utilities: config checks, resumable training, safetensors checkpoints, the cache, prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from course_utils import data, modeling

TINY = modeling.TrainConfig(batch_size=8, epochs=2, save_every=3, max_length=32, lr=1e-4)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr must be in"):
        modeling.TrainConfig(lr=5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        modeling.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="train_size must be positive"):
        modeling.TrainConfig(train_size=-1)


def _fresh_model():
    torch.manual_seed(0)
    return modeling.load_model(num_labels=2)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, tiny_splits, tokenizer):
    full = _fresh_model()
    history = modeling.train(
        full, tokenizer, tiny_splits.train, tiny_splits.validation, TINY, tmp_path / "full", progress=False
    )
    assert [row["epoch"] for row in history] == [1, 2]
    assert (tmp_path / "full" / "done.json").exists()

    part = _fresh_model()
    modeling.train(
        part, tokenizer, tiny_splits.train, tiny_splits.validation, TINY, tmp_path / "cut", progress=False, stop_after=8
    )  # a disconnect mid-epoch 2
    assert not (tmp_path / "cut" / "done.json").exists()
    resumed = _fresh_model()  # a new session: weights come back from the saved state
    again = modeling.train(
        resumed, tokenizer, tiny_splits.train, tiny_splits.validation, TINY, tmp_path / "cut", progress=False
    )
    assert [row["epoch"] for row in again] == [1, 2]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert again[-1]["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"])


class Disconnect(Exception):
    """What a dropped Colab session looks like to the loop: an exception from inside the batch iterator."""


def test_a_real_interruption_resumes_from_the_last_periodic_save(tmp_path, tiny_splits, tokenizer, monkeypatch):
    """No forced save at the cut: steps after the last periodic save are replayed and give the same run."""
    cfg = modeling.TrainConfig(batch_size=8, epochs=2, save_every=4, max_length=32, lr=1e-4)  # 6 steps per epoch
    full = _fresh_model()
    history = modeling.train(
        full, tokenizer, tiny_splits.train, tiny_splits.validation, cfg, tmp_path / "full", progress=False
    )
    real_batches, served = modeling.batches, []

    def dropping(*args, **kwargs):
        for batch in real_batches(*args, **kwargs):
            if len(served) == 9:  # steps 1-9 done; periodic saves at 4 and 8 (and the epoch end at 6)
                raise Disconnect
            served.append(1)
            yield batch

    with monkeypatch.context() as patch:
        patch.setattr(modeling, "batches", dropping)
        with pytest.raises(Disconnect):
            modeling.train(
                _fresh_model(),
                tokenizer,
                tiny_splits.train,
                tiny_splits.validation,
                cfg,
                tmp_path / "cut",
                progress=False,
            )
    saved = json.loads((tmp_path / "cut" / "state" / "state.json").read_text())["progress"]
    assert saved["step"] == 8, "the last periodic save, not the step of the cut"
    resumed = _fresh_model()
    again = modeling.train(
        resumed, tokenizer, tiny_splits.train, tiny_splits.validation, cfg, tmp_path / "cut", progress=False
    )
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)

    def drop_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert drop_time(again) == drop_time(history)
    done_full = json.loads((tmp_path / "full" / "done.json").read_text())
    done_cut = json.loads((tmp_path / "cut" / "done.json").read_text())
    assert done_cut["curve"] == done_full["curve"] and len(done_full["curve"]) == 1


def test_best_checkpoint_is_safetensors_and_reloads(tmp_path, tiny_splits, tokenizer):
    model = _fresh_model()
    modeling.train(
        model,
        tokenizer,
        tiny_splits.train,
        tiny_splits.validation,
        modeling.TrainConfig(batch_size=16, epochs=1, max_length=32),
        tmp_path,
        progress=False,
    )
    best = tmp_path / "best"
    assert (best / "model.safetensors").exists()
    assert not list(best.glob("*.bin")) and not list(best.glob("*.pt")), "no pickled weights"
    reloaded = modeling.load_model(num_labels=2, source=best)
    texts = tiny_splits.test["text"].tolist()
    assert torch.allclose(
        torch.as_tensor(modeling.predict_proba(model, tokenizer, texts)),
        torch.as_tensor(modeling.predict_proba(reloaded, tokenizer, texts)),
        atol=1e-5,
    )
    assert not list(tmp_path.glob(".*")), "no temporary folders left behind"


def test_finetune_caches_by_configuration(tmp_cache, tiny_splits):
    cfg = modeling.TrainConfig(batch_size=16, epochs=1, max_length=32)
    first = modeling.finetune(tiny_splits, cfg, progress=False)
    second = modeling.finetune(tiny_splits, cfg, progress=False)
    assert first.trained_now and not second.trained_now and first.run_dir == second.run_dir
    assert not (first.run_dir / "state").exists(), "resume state is removed once training is done"
    other = modeling.checkpoint_key(modeling.TrainConfig(batch_size=16, epochs=2, max_length=32), tiny_splits)
    assert other != first.run_dir.name
    done = json.loads((first.run_dir / "done.json").read_text())
    assert done["config"]["epochs"] == 1 and len(done["history"]) == 1


def test_predict_on_raw_strings(tokenizer, tiny_splits):
    model = _fresh_model()
    labels = modeling.predict(model, tokenizer, ["a joy", "a bore"], label_names=data.LABEL_NAMES)
    assert set(labels) <= set(data.LABEL_NAMES) and len(labels) == 2
    probs = modeling.predict_proba(model, tokenizer, ["short", "a much longer sentence " * 5, "mid length one"])
    assert probs.shape == (3, 2) and abs(probs.sum(1) - 1).max() < 1e-5
    with pytest.raises(ValueError, match="wrap it"):
        modeling.predict_proba(model, tokenizer, "one string")
    result = modeling.evaluate(model, tokenizer, tiny_splits.test)
    assert 0 <= result.accuracy <= 1 and result.confusion.sum() == len(tiny_splits.test)


def test_predict_proba_restores_the_input_order(tokenizer):
    """Length sorting inside predict_proba must not shuffle rows: compare with one text at a time."""
    model = _fresh_model()
    texts = [
        "a much longer sentence about a film that goes on and on",
        "short",
        "mid length one here",
        "ok",
        "another fairly long sentence, with commas, and more words than most",
    ]
    together = modeling.predict_proba(model, tokenizer, texts, batch_size=2)
    one_by_one = np.concatenate([modeling.predict_proba(model, tokenizer, [t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert len({round(float(p), 5) for p in together[:, 1]}) == len(texts), "distinct rows, so order is tested"


def test_model_loads_offline_with_the_published_size():
    model = modeling.load_model(num_labels=3)
    assert 22.0e6 < modeling.count_parameters(model) < 23.5e6
    assert model.classifier.out_features == 3
    with pytest.raises(ValueError, match="num_labels must be >= 2"):
        modeling.load_model(num_labels=1)


def test_unknown_model_names_list_the_valid_ones(monkeypatch):
    monkeypatch.setenv("COURSE_MODE", "offline")
    with pytest.raises(ValueError, match=r"not available offline; use one of \['minilm'\]"):
        modeling.load_model(num_labels=2, source="bert-base-uncased")
    assert modeling.resolve_model("minilm") == modeling.model_source()
    monkeypatch.setenv("COURSE_MODE", "online")
    assert modeling.resolve_model("bert-base-uncased") == "bert-base-uncased"
