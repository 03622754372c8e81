"""Chapter 02: private fine-tuning on cached frozen features, the audits, and the position-embedding pitfall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_utils import audit, frozen, modeling, privacy, private_runs, topmodel
from course_utils import private_training as pt

HIDDEN = 384  # MiniLM-L6's width (the code reads it from encoder.config)


@pytest.fixture(scope="module")
def encoder():
    return modeling.load_model().bert.eval()


@pytest.fixture(scope="module")
def sample(movie):
    """96 real movie sentences."""
    return movie.sample(96, random_state=3).reset_index(drop=True)


def test_blocks_reproduce_the_whole_encoder(encoder, tokenizer, sample) -> None:
    enc = tokenizer(sample["text"].head(8).tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        whole = encoder(**enc).last_hidden_state
        hidden = encoder.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        ours = frozen.run_blocks(encoder.encoder.layer, hidden, enc["attention_mask"])
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[real], whole[real], atol=1e-5, rtol=1e-5)


def test_any_cut_gives_the_same_classifier(encoder, tokenizer, sample) -> None:
    """Blocks 1-3 cached + blocks 4-6 trained == blocks 1-6 cached + head: the cut only moves work."""
    texts, labels = sample["text"].head(12).tolist(), sample["label"].head(12).to_numpy()
    low = frozen.encode_frozen(texts, labels, 3, encoder, tokenizer, progress=False)
    high = frozen.encode_frozen(texts, labels, 6, encoder, tokenizer, progress=False)
    assert len(low) == 12 and low.flat.dtype == torch.float16 and int(low.lengths.sum()) == low.flat.shape[0]
    top = topmodel.TopClassifier.from_pretrained(3, encoder=encoder, seed=0)
    head = topmodel.TopClassifier.from_pretrained(6, encoder=encoder, seed=0)
    assert len(top.blocks) == 3 and len(head.blocks) == 0
    np.testing.assert_allclose(topmodel.predict_logits(top, low), topmodel.predict_logits(head, high), atol=2e-2)


def test_features_subset_concat_and_batch(encoder, tokenizer, sample) -> None:
    feats = frozen.encode_frozen(
        sample["text"].head(6).tolist(), sample["label"].head(6).to_numpy(), 6, encoder, tokenizer, progress=False
    )
    both = frozen.Features.concat(feats.subset([4, 1]), feats.subset([0]))
    hidden, mask, labels = both.batch([0, 1, 2])
    assert hidden.shape == (3, int(mask.sum(1).max()), HIDDEN) and labels.tolist() == feats.labels[[4, 1, 0]].tolist()
    assert mask.sum(1).tolist() == feats.lengths[[4, 1, 0]].tolist()
    torch.testing.assert_close(hidden[2, : int(feats.lengths[0])], feats.batch([0])[0][0])


def test_cached_features_are_written_once_and_reloaded(tmp_cache, sample) -> None:
    first = frozen.cached_features(sample.head(10), 6, progress=False)
    files = list((tmp_cache / "features").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors" and first.key
    again = frozen.cached_features(sample.head(10), 6, progress=False)
    assert again.key == first.key and torch.equal(again.flat, first.flat)
    assert frozen.cached_features(sample.head(11), 6, progress=False).key != first.key


def test_private_training_spends_its_budget_and_returns_a_plain_model(tmp_cache, sample) -> None:
    feats = frozen.cached_features(sample, 6, progress=False)
    cfg = pt.DPConfig(epsilon=2.0, frozen_layers=6, epochs=2, batch_size=16, lr=1e-2, clip_norm=0.5)
    run = pt.train_private(feats, cfg, progress=False)
    assert run.epsilon == pytest.approx(2.0, abs=0.05) and run.noise_multiplier > 0.5
    assert run.delta == pytest.approx(1 / (10 * len(sample))) and run.steps == 2 * 6 and len(run.losses) <= run.steps
    assert type(run.model) is topmodel.TopClassifier
    assert not any(m._forward_hooks or m._backward_hooks for m in run.model.modules())  # Opacus hooks removed
    assert 0.0 <= topmodel.accuracy(run.model, feats) <= 1.0
    cached = private_runs.train_cached(feats, cfg, progress=False)
    reloaded = private_runs.train_cached(feats, cfg, progress=False)
    np.testing.assert_allclose(
        topmodel.predict_logits(cached.model, feats), topmodel.predict_logits(reloaded.model, feats)
    )
    assert reloaded.epsilon == pytest.approx(cached.epsilon) and reloaded.losses == cached.losses


def test_non_private_training_is_reproducible(tmp_cache, sample) -> None:
    feats = frozen.cached_features(sample, 6, progress=False)
    cfg = pt.DPConfig(epsilon=math.inf, frozen_layers=6, epochs=3, batch_size=16, lr=1e-2)
    a, b = pt.train_private(feats, cfg, progress=False), pt.train_private(feats, cfg, progress=False)
    assert a.epsilon == math.inf and a.noise_multiplier == 0.0
    torch.testing.assert_close(a.model.classifier.weight, b.model.classifier.weight)
    assert a.losses[-1] < a.losses[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": 0}, "epsilon must be > 0"),
        ({"epsilon": -1}, "epsilon must be > 0"),
        ({"delta": 1.0}, "delta must be in"),
        ({"clip_norm": 0}, "clip_norm must be > 0"),
        ({"frozen_layers": -1}, "frozen_layers must be a non-negative integer"),
        ({"batch_size": 0}, "batch_size"),
        ({"lora_rank": -2}, "lora_rank must be a non-negative integer"),
        ({"lr": 2.0}, "lr must be in"),
        ({"accountant": "gdp"}, "accountant must be"),
    ],
)
def test_bad_configs_get_one_line_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        pt.DPConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_mismatched_features_and_oversized_batches_are_refused(tmp_cache, sample) -> None:
    feats = frozen.cached_features(sample.head(20), 6, progress=False)
    with pytest.raises(ValueError, match="frozen_layers=5"):
        pt.train_private(feats, pt.DPConfig(frozen_layers=5), progress=False)
    with pytest.raises(ValueError, match="larger than the 20 training examples"):
        pt.train_private(feats, pt.DPConfig(frozen_layers=6, batch_size=64), progress=False)
    with pytest.raises(ValueError, match="cached_features"):
        private_runs.train_cached(
            frozen.Features(feats.flat, feats.lengths, feats.labels, 6), pt.DPConfig(frozen_layers=6)
        )


def test_position_embeddings_break_per_sample_gradients_until_frozen(tokenizer) -> None:
    model = modeling.load_model()
    texts = ["a fine film", "dull", "the plot goes nowhere at all", "warm and funny"]
    assert privacy.grad_sample_mismatches(model, tokenizer, texts) == {
        "bert.embeddings.position_embeddings.weight": (1, 512, HIDDEN)
    }
    model.bert.embeddings.position_embeddings.weight.requires_grad_(False)
    assert privacy.grad_sample_mismatches(model, tokenizer, texts) == {}
    assert not any(getattr(p, "grad_sample", None) is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------- audits


def test_loss_attack_metrics() -> None:
    low, high = np.linspace(0.0, 0.4, 100), np.linspace(0.5, 1.0, 100)
    assert audit.loss_attack(low, high) == {"auc": 1.0, "tpr_at_1pct_fpr": 1.0}
    assert audit.loss_attack(high, low)["auc"] == 0.0
    same = np.random.default_rng(0).exponential(1.0, 4000)
    assert audit.loss_attack(same[:2000], same[2000:])["auc"] == pytest.approx(0.5, abs=0.03)
    # calibration: members are "easy" for the reference too, so the raw signal disappears after subtracting it
    calibrated = audit.calibrated_attack(low, high, low, high)
    assert calibrated["auc"] == pytest.approx(0.5, abs=0.01)


def test_attack_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        audit.loss_attack([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        audit.loss_attack([np.nan], [1.0])
    with pytest.raises(ValueError, match="one to one"):
        audit.calibrated_attack([1.0, 2.0], [1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="fpr must be in"):
        audit.tpr_at_fpr([1, 0], [0.3, 0.1], fpr=0)


def test_canaries_and_exposure() -> None:
    candidates, canaries = audit.make_canaries(5, 50, seed=1)
    assert candidates["code"].is_unique and len(candidates) == 50 and set(canaries["code"]) <= set(candidates["code"])
    assert canaries["text"].str.startswith("my pin number is ").all() and set(canaries["label"]) <= {0, 1}
    again = audit.make_canaries(5, 50, seed=1)
    assert again[1].equals(canaries)
    losses = np.arange(1.0, 65.0)
    assert audit.exposure(1.0, losses) == pytest.approx(6.0)  # rank 1 of 64
    assert audit.exposure(64.0, losses) == pytest.approx(0.0)  # rank 64 of 64
    with pytest.raises(ValueError, match="n_canaries"):
        audit.make_canaries(10, 5)
    with pytest.raises(ValueError, match="two candidate"):
        audit.exposure(1.0, [1.0])


def test_canary_exposures_refuse_unknown_codes(encoder, tokenizer) -> None:
    candidates, canaries = audit.make_canaries(2, 8, seed=0)
    feats = frozen.encode_frozen(
        candidates["text"].tolist(), np.zeros(8, dtype=int), 6, encoder, tokenizer, progress=False
    )
    model = topmodel.TopClassifier.from_pretrained(6, encoder=encoder, seed=0)
    got = audit.canary_exposures(model, feats, candidates["code"], canaries)
    assert got.shape == (2,) and ((0 <= got) & (got <= 3)).all()
    with pytest.raises(ValueError, match="not among the candidates"):
        audit.canary_exposures(model, feats, candidates["code"], canaries.assign(code="zzzz"))


def test_canary_exposures_equal_the_per_canary_definition(encoder, tokenizer) -> None:
    """One forward pass for all canaries must give what the definition gives canary by canary."""
    candidates, canaries = audit.make_canaries(6, 64, seed=4)
    feats = frozen.encode_frozen(
        candidates["text"].tolist(), np.zeros(64, dtype=int), 6, encoder, tokenizer, progress=False
    )
    model = topmodel.TopClassifier.from_pretrained(6, encoder=encoder, seed=3).eval()
    with torch.no_grad():  # a head that separates the candidates, so ranks differ between canaries
        model.classifier.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    got = audit.canary_exposures(model, feats, candidates["code"], canaries)
    expected = []
    for code, label in zip(canaries["code"], canaries["label"], strict=True):
        losses = topmodel.per_example_loss(model, feats, labels=np.full(64, label))
        expected.append(audit.exposure(losses[candidates.index[candidates["code"] == code][0]], losses))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(set(np.round(expected, 6))) > 2, "the exposures differ, so a mix-up between canaries would show"


def test_lora_trains_only_adapters_and_head_and_reloads(tmp_cache, sample) -> None:
    model = topmodel.TopClassifier.from_pretrained(5, lora_rank=4)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or name.startswith("classifier.") for name in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 2 * 4 * (384 + 384) // 2 + 770
    feats = frozen.cached_features(sample.head(48), 5, progress=False)
    cfg = pt.DPConfig(epsilon=4.0, frozen_layers=5, lora_rank=4, epochs=1, batch_size=16, lr=1e-2)
    run = private_runs.train_cached(feats, cfg, progress=False)
    pretrained = dict(topmodel.TopClassifier.from_pretrained(5, lora_rank=4).named_parameters())
    for name, p in run.model.named_parameters():  # the block's own weights did not move
        if "lora_" not in name and not name.startswith("classifier."):
            torch.testing.assert_close(p, pretrained[name])
    moved = [name for name, p in run.model.named_parameters() if "lora_B" in name and p.abs().max() > 0]
    assert len(moved) == 2, "peft starts lora_B at zero: both adapters (query, value) must have trained"
    again = private_runs.train_cached(feats, cfg, progress=False)
    np.testing.assert_allclose(
        topmodel.predict_logits(again.model, feats), topmodel.predict_logits(run.model, feats), atol=1e-6
    )
    with pytest.raises(ValueError, match="lora_rank needs at least one block on top to adapt; use frozen_layers=5"):
        topmodel.TopClassifier.from_pretrained(6, lora_rank=8)
    with pytest.raises(ValueError, match=r"frozen_layers must be an integer in 0\.\.6 for this 6-block encoder"):
        topmodel.TopClassifier.from_pretrained(7)


def test_membership_audit_tabulates_each_target_like_the_attacks() -> None:
    rng = np.random.default_rng(0)
    leaky = (rng.exponential(0.5, 200), rng.exponential(1.0, 200), rng.exponential(1.0, 200))
    private = (rng.exponential(1.0, 200), rng.exponential(1.0, 200), rng.exponential(1.0, 200))
    ref_nonmembers = rng.exponential(1.0, 200)
    table = audit.membership_audit({("leaky", math.inf): leaky, ("private", 8.0): private}, ref_nonmembers)
    assert list(table.index) == [("leaky", math.inf), ("private", 8.0)]
    assert table.loc[("leaky", math.inf), "loss auc"] == audit.loss_attack(*leaky[:2])["auc"] > 0.6
    calibrated = audit.calibrated_attack(private[0], private[1], private[2], ref_nonmembers)
    assert table.loc[("private", 8.0), "calibrated auc"] == calibrated["auc"]
    assert set(table.columns) == {"loss auc", "loss tpr_at_1pct_fpr", "calibrated auc", "calibrated tpr_at_1pct_fpr"}


def test_example_losses_are_the_cross_entropy_of_each_sentence(tokenizer, sample) -> None:
    model = modeling.load_model().eval()
    frame = sample.head(6)
    probs = modeling.predict_proba(model, tokenizer, frame["text"].tolist())
    expected = [-math.log(probs[i, label]) for i, label in enumerate(frame["label"])]
    np.testing.assert_allclose(modeling.example_losses(model, tokenizer, frame), expected, rtol=1e-6)
