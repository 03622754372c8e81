"""The cache layer: keys change with every argument that changes a result, writes are atomic under failure."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from course_utils import assets, config, frozen, modeling, privacy, private_runs, store
from course_utils import private_training as pt

# ---------------------------------------------------------------------------------------------- key()


def test_key_tells_apart_types_values_and_order() -> None:
    parts = [1, 1.0, "1", True, None, [1], (1.0,), {"a": 1}, math.inf, Path("1")]
    keys = [store.key(p) for p in parts]
    assert len(set(keys)) == len(keys), "1, 1.0, '1', True, None, [1], ... must all differ"
    assert store.key(1, 2) != store.key(2, 1) and store.key([1, 2]) != store.key(1, 2)
    assert store.key({"a": 1, "b": 2}) == store.key({"b": 2, "a": 1}), "mapping order is not content"
    assert len(store.key("x")) == store.KEY_LENGTH


def test_key_sees_inside_frames_arrays_tensors_modules_and_dataclasses() -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    assert store.key(frame) == store.key(frame.copy())
    assert store.key(frame) != store.key(frame.assign(label=[1, 1]))
    assert store.key(frame) != store.key(frame.assign(text=["a", "c"]))
    array = np.arange(6, dtype=np.int64)
    assert store.key(array) != store.key(array.astype(np.int32)) != store.key(array.reshape(2, 3))
    tensor = torch.zeros(3)
    assert store.key(tensor) != store.key(tensor + 1e-7)
    net = torch.nn.Linear(2, 2)
    before = store.key(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert store.key(net) != before
    cfg = modeling.TrainConfig()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        changed = 7 if value is None else (value + 1 if isinstance(value, int) else value * 0.5)
        changed = (1.0, 2.0) if f.name == "class_weights" else changed  # one weight per class
        assert store.key(dataclasses.replace(cfg, **{f.name: changed})) != store.key(cfg), f.name
    with pytest.raises(TypeError, match="cannot hash a object"):
        store.key(object())


# ---------------------------------------------------------------------------------------------- checkpoint key


def test_checkpoint_key_changes_with_config_data_labels_and_weights(tiny_splits, monkeypatch) -> None:
    cfg = modeling.TrainConfig(batch_size=16, epochs=1, max_length=32)
    base = modeling.checkpoint_key(cfg, tiny_splits)
    assert modeling.checkpoint_key(cfg, tiny_splits) == base
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        changed = 7 if value is None else (value + 1 if isinstance(value, int) else value * 0.5)
        changed = (1.0, 2.0) if f.name == "class_weights" else changed  # one weight per class
        assert modeling.checkpoint_key(dataclasses.replace(cfg, **{f.name: changed}), tiny_splits) != base, f.name
    edited = tiny_splits.train.copy()
    edited.loc[0, "text"] = edited.loc[0, "text"] + "!"
    assert modeling.checkpoint_key(cfg, dataclasses.replace(tiny_splits, train=edited)) != base
    flipped = tiny_splits.test.copy()
    flipped.loc[0, "label"] = 1 - flipped.loc[0, "label"]
    assert modeling.checkpoint_key(cfg, dataclasses.replace(tiny_splits, test=flipped)) != base
    renamed = dataclasses.replace(tiny_splits, label_names=["neg", "pos"])
    assert modeling.checkpoint_key(cfg, renamed) != base
    monkeypatch.setattr(modeling, "LOOP_VERSION", modeling.LOOP_VERSION + 1)
    assert modeling.checkpoint_key(cfg, tiny_splits) != base, "a changed training loop must not reuse checkpoints"
    monkeypatch.undo()
    monkeypatch.setattr(assets, "MODEL_SAFETENSORS_SHA256", "0" * 64)
    assert modeling.checkpoint_key(cfg, tiny_splits) != base, "other pretrained weights, other checkpoint"
    monkeypatch.setenv("COURSE_MODE", "online")
    assert modeling.checkpoint_key(cfg, tiny_splits) != base


# ---------------------------------------------------------------------------------------------- features / runs


@pytest.fixture(scope="module")
def encoder():
    return modeling.load_model().bert.eval()


def test_features_key_changes_with_every_argument(movie, encoder, tokenizer) -> None:
    texts, labels = movie["text"].head(5).tolist(), movie["label"].head(5).to_numpy()
    base = frozen.features_key(texts, labels, 5)
    assert frozen.features_key(texts, labels, 5) == base
    changed_encoder = modeling.load_model().bert
    with torch.no_grad():
        changed_encoder.encoder.layer[0].output.dense.bias += 1e-3
    lowercase = modeling.load_tokenizer()
    lowercase.add_tokens(["zzzcoursetoken"])
    variants = {
        "texts": frozen.features_key(texts[:4] + ["other"], labels, 5),
        "labels": frozen.features_key(texts, 1 - labels, 5),
        "frozen_layers": frozen.features_key(texts, labels, 4),
        "encoder": frozen.features_key(texts, labels, 5, encoder=changed_encoder),
        "tokenizer": frozen.features_key(texts, labels, 5, tokenizer=lowercase),
        "batch_size": frozen.features_key(texts, labels, 5, batch_size=32),
        "max_length": frozen.features_key(texts, labels, 5, max_length=32),
    }
    for name, variant in variants.items():
        assert variant != base, f"{name} must change the features key"
    assert frozen.features_key(texts, labels, 5, encoder=encoder) == frozen.features_key(
        texts, labels, 5, encoder=modeling.load_model().bert
    ), "the same weights, the same key"


def test_run_key_changes_with_features_config_and_encoder(encoder, monkeypatch) -> None:
    feats = frozen.Features(
        torch.zeros(3, 4, dtype=torch.float16), torch.tensor([1, 2]), torch.tensor([0, 1]), 6, key="abc"
    )
    cfg = pt.DPConfig(frozen_layers=6)
    base = private_runs.run_key(feats, cfg)
    changes = {
        "epsilon": 3.0,
        "delta": 1e-6,
        "frozen_layers": 5,
        "epochs": 4,
        "batch_size": 128,
        "lr": 2e-3,
        "clip_norm": 0.5,
        "seed": 1,
        "accountant": "prv",
        "lora_rank": 4,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(cfg)}, "a new DPConfig field needs a case here"
    for name, value in changes.items():
        assert private_runs.run_key(feats, dataclasses.replace(cfg, **{name: value})) != base, name
    assert private_runs.run_key(dataclasses.replace(feats, key="abd"), cfg) != base
    monkeypatch.setattr(privacy, "default_delta", lambda n: 1 / (100 * n))
    assert private_runs.run_key(feats, cfg) != base, "the default delta is part of what the run used"
    assert private_runs.run_key(feats, cfg, encoder=encoder) != base
    with pytest.raises(ValueError, match="no cache key; build them with frozen.cached_features"):
        private_runs.run_key(dataclasses.replace(feats, key=""), cfg)


def test_features_key_of_a_label_change_reaches_the_cache(tmp_cache, movie) -> None:
    frame = movie.head(6)
    first = frozen.cached_features(frame, 6, progress=False)
    relabelled = frozen.cached_features(frame.assign(label=1 - frame["label"]), 6, progress=False)
    assert relabelled.key != first.key and torch.equal(relabelled.flat, first.flat)
    assert (relabelled.labels == 1 - first.labels).all(), "the cache must not return the old labels"
    assert len(list((tmp_cache / "features").glob("*.safetensors"))) == 2


# ---------------------------------------------------------------------------------------------- retrain switches


def _fake_checkpoint(run_dir, num_labels: int = 2) -> None:
    """A finished run folder, as finetune leaves it, built from the pretrained weights (no training)."""
    model, tokenizer = modeling.load_model(num_labels=num_labels), modeling.load_tokenizer()
    with modeling.quiet_transformers():
        model.save_pretrained(run_dir / "best")
        tokenizer.save_pretrained(run_dir / "best")
    store.write_json(run_dir / "done.json", {"config": {}, "history": [{"epoch": 1}], "curve": []})


def test_retrain_rebuilds_finetune_but_never_the_shared_course_model(tmp_cache, monkeypatch) -> None:
    from course_utils import data

    splits = data.course_splits()
    cfg = modeling.default_config(fast=True)
    _fake_checkpoint(store.path("checkpoints", modeling.checkpoint_key(cfg, splits)))
    calls = []

    def no_training(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("training was started")

    monkeypatch.setattr(modeling, "train", no_training)
    monkeypatch.setenv("COURSE_RETRAIN", "1")
    shared = modeling.course_model(fast=True, progress=False)
    assert not shared.trained_now and calls == [], "course_model() must never retrain the shared checkpoint"
    with pytest.raises(RuntimeError, match="training was started"):
        modeling.finetune(splits, cfg, progress=False)  # COURSE_RETRAIN=1: chapter 00 rebuilds it
    monkeypatch.setenv("COURSE_RETRAIN", "0")
    _fake_checkpoint(store.path("checkpoints", modeling.checkpoint_key(cfg, splits)))
    assert not modeling.finetune(splits, cfg, progress=False).trained_now


def test_retrain_rebuilds_a_cached_private_run(tmp_cache, movie, monkeypatch) -> None:
    feats = frozen.cached_features(movie.head(40), 6, progress=False)
    cfg = pt.DPConfig(epsilon=math.inf, frozen_layers=6, epochs=1, batch_size=8, lr=1e-2)
    trained = []
    real = private_runs.train_private
    monkeypatch.setattr(private_runs, "train_private", lambda *a, **k: trained.append(1) or real(*a, **k))
    private_runs.train_cached(feats, cfg, progress=False)
    private_runs.train_cached(feats, cfg, progress=False)
    assert trained == [1], "the second call reads the cache"
    monkeypatch.setenv("COURSE_RETRAIN", "1")
    private_runs.train_cached(feats, cfg, progress=False)
    assert trained == [1, 1], "COURSE_RETRAIN=1 retrains"
    private_runs.train_cached(feats, dataclasses.replace(cfg, lr=2e-2), progress=False, retrain=False)
    assert trained == [1, 1, 1], "a changed config is a new run"


# ---------------------------------------------------------------------------------------------- atomic writes


class Boom(RuntimeError):
    pass


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failing_file_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "sub" / "result.json"
    store.write_json(target, {"v": 1})
    with pytest.raises(Boom):
        with store.atomic_file(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise Boom
    assert json.loads(target.read_text()) == {"v": 1} and _leftovers(target.parent) == []
    store.write_text(target, "two\n")
    assert target.read_text() == "two\n" and _leftovers(target.parent) == []


def test_a_failing_folder_writer_keeps_the_old_folder_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "run"
    store.write_dir(target, lambda d: (d / "model.safetensors").write_text("old"))

    def half(d):
        (d / "model.safetensors").write_text("new, half written")
        raise Boom

    with pytest.raises(Boom):
        store.write_dir(target, half)
    assert (target / "model.safetensors").read_text() == "old" and _leftovers(tmp_path) == []
    store.write_dir(target, lambda d: (d / "model.safetensors").write_text("new"))
    assert (target / "model.safetensors").read_text() == "new" and _leftovers(tmp_path) == []


def test_interrupted_checkpoint_save_keeps_the_previous_state(tmp_path, monkeypatch) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    modeling._save_state(tmp_path, model, optimizer, modeling.Progress(step=3))
    with monkeypatch.context() as patch:
        patch.setattr(modeling, "save_file", lambda *a, **k: (_ for _ in ()).throw(Boom()))
        with pytest.raises(Boom):
            modeling._save_state(tmp_path, model, optimizer, modeling.Progress(step=6))
    assert modeling._load_state(tmp_path, model, optimizer).step == 3 and _leftovers(tmp_path) == []


def test_interrupted_feature_cache_leaves_nothing(tmp_cache, movie, monkeypatch) -> None:
    monkeypatch.setattr(frozen, "save_file", lambda *a, **k: (_ for _ in ()).throw(Boom()))
    with pytest.raises(Boom):
        frozen.cached_features(movie.head(3), 6, progress=False)
    assert list((tmp_cache / "features").iterdir()) == []


def test_interrupted_report_keeps_the_previous_figures(tmp_path, monkeypatch) -> None:
    from course_utils import report

    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path))
    report.record("00_x", {"accuracy": 0.5})
    with monkeypatch.context() as patch:
        patch.setattr(store.os, "replace", lambda *a, **k: (_ for _ in ()).throw(Boom()))
        with pytest.raises(Boom):
            report.record("00_x", {"accuracy": 0.9})
    assert report.load("00_x")["accuracy"] == 0.5
    assert _leftovers(tmp_path / "figures") == []


def test_interrupted_asset_extraction_is_not_marked_complete(tmp_cache, monkeypatch) -> None:
    (tmp_cache / "assets").unlink()  # a private, empty asset folder
    monkeypatch.setattr(assets, "fetch", lambda name: tmp_cache / "archive.whl")

    def broken(archive, out):
        (out / "config.json").write_text("{}")
        raise Boom

    monkeypatch.setitem(assets._EXTRACTORS, "minilm", broken)
    with pytest.raises(Boom):
        assets.extract("minilm")
    folder = config.cache_dir() / "assets"
    assert [p for p in folder.iterdir()] == [], "no half-extracted folder, no temporary"
