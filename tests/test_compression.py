"""Chapter 04's compression code on a tiny random BERT: each test names the bug it would catch."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from course_utils import compression, distillation, modeling, store

TEXTS = ["a fine film", "dull and long", "the best movie this year", "i want my money back", "not bad at all"]


def tiny_bert(seed: int = 0, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture()
def frame(tiny_splits) -> pd.DataFrame:
    return tiny_splits.train.head(24).reset_index(drop=True)


def logits(model, tokenizer, texts=TEXTS) -> np.ndarray:
    return compression.TorchRunner(model).logits(*compression.encode(tokenizer, texts))


def gated(model, tokenizer, unit: str, keep: dict[int, list[int]], texts=TEXTS) -> np.ndarray:
    """Logits with the dropped heads' outputs (or neurons' activations) multiplied by zero: what pruning must equal."""
    hooks = []
    for layer, block in enumerate(compression.blocks(model)):
        if unit == "heads":
            gate = torch.zeros(4)
            gate[keep[layer]] = 1
            hooks.append(
                block.attention.self.register_forward_hook(
                    lambda _m, _i, out, g=gate: ((out[0].unflatten(-1, (4, -1)) * g[:, None]).flatten(-2), *out[1:])
                )
            )
        else:
            gate = torch.zeros(64)
            gate[keep[layer]] = 1
            hooks.append(block.intermediate.register_forward_hook(lambda _m, _i, out, g=gate: out * g))
    try:
        return logits(model, tokenizer, texts)
    finally:
        for hook in hooks:
            hook.remove()


def test_magnitude_pruning_is_global_and_matches_a_hand_ranking():
    model = tiny_bert()
    pruned = compression.make_pruning_permanent(compression.magnitude_prune(model, 0.6))
    weights = torch.cat([m.weight.detach().abs().flatten() for m, _ in compression.encoder_linears(model)])
    threshold = weights.kthvalue(round(0.6 * weights.numel())).values
    expected = [(m.weight.detach().abs() > threshold) for m, _ in compression.encoder_linears(model)]
    got = [(m.weight.detach() != 0) for m, _ in compression.encoder_linears(pruned)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))  # a per-layer ranking would differ
    assert compression.encoder_sparsity(pruned) == pytest.approx(0.6, abs=1e-3)
    assert compression.encoder_sparsity(model) == 0  # the original is untouched (pruning works on a copy)
    shares = [float((m.weight == 0).float().mean()) for m, _ in compression.encoder_linears(pruned)]
    assert max(shares) - min(shares) > 0.01  # global: layers end up with different sparsities


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.5"])
def test_sparsity_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        compression.magnitude_prune(tiny_bert(), bad)


def test_recovery_keeps_the_zeros_and_is_cached(tmp_cache, tokenizer, frame):
    model = tiny_bert()
    recipe = distillation.Recipe(epochs=1, lr=1e-3, batch_size=8, max_length=32)
    first = distillation.recover(model, 0.5, tokenizer, frame, recipe, progress=False)
    assert first.trained_now and compression.encoder_sparsity(first.model) == pytest.approx(0.5, abs=1e-3)
    before = compression.make_pruning_permanent(compression.magnitude_prune(model, 0.5))
    moved = [
        not torch.equal(a.weight, b.weight)
        for (a, _), (b, _) in zip(
            compression.encoder_linears(before), compression.encoder_linears(first.model), strict=True
        )
    ]
    assert all(moved)  # the surviving weights trained
    again = distillation.recover(model, 0.5, tokenizer, frame, recipe, progress=False)
    assert not again.trained_now and again.losses == first.losses
    np.testing.assert_allclose(logits(again.model, tokenizer), logits(first.model, tokenizer), atol=1e-6)
    other = distillation.recover(
        model,
        0.5,
        tokenizer,
        frame,
        distillation.Recipe(epochs=1, lr=2e-3, batch_size=8, max_length=32),
        progress=False,
    )
    assert other.trained_now  # the recipe is part of the key


def test_head_pruning_equals_zeroing_those_heads(tokenizer):
    model = tiny_bert()
    keep = {0: [1, 3], 1: [0], 2: [0, 1, 2]}
    pruned = compression.prune_heads(model, keep)
    assert [b["heads"] for b in compression.structure(pruned)] == [2, 1, 3]
    assert modeling.count_parameters(pruned) < modeling.count_parameters(model)
    np.testing.assert_allclose(logits(pruned, tokenizer), gated(model, tokenizer, "heads", keep), atol=1e-5)


def test_neuron_pruning_equals_zeroing_those_neurons(tokenizer):
    model = tiny_bert()
    keep = {i: sorted(np.random.default_rng(i).choice(64, 20, replace=False).tolist()) for i in range(3)}
    pruned = compression.prune_neurons(model, keep)
    assert [b["neurons"] for b in compression.structure(pruned)] == [20, 20, 20]
    np.testing.assert_allclose(logits(pruned, tokenizer), gated(model, tokenizer, "neurons", keep), atol=1e-5)


def test_gate_importance_is_the_gradient_of_the_loss_by_each_gate(tokenizer, frame):
    model = tiny_bert()
    scores = compression.gate_importance(model, tokenizer, frame, "heads", batch_size=len(frame), max_length=32)
    assert [s.shape for s in scores] == [torch.Size([4])] * 3
    batch = next(modeling.batches(frame, tokenizer, len(frame), 32))

    def loss_with(layer: int, head: int, value: float) -> float:
        gate = torch.ones(4, dtype=torch.float64)
        gate[head] = value
        hook = compression.blocks(model)[layer].attention.self.register_forward_hook(
            lambda _m, _i, out: ((out[0].unflatten(-1, (4, -1)) * gate.float()[:, None]).flatten(-2), *out[1:])
        )
        try:
            with torch.no_grad():
                return float(model(**batch).loss)
        finally:
            hook.remove()

    eps = 1e-2
    for layer, head in [(0, 1), (2, 3)]:
        numeric = abs(loss_with(layer, head, 1 + eps) - loss_with(layer, head, 1 - eps)) / (2 * eps)
        assert float(scores[layer][head]) == pytest.approx(numeric, rel=0.05, abs=1e-5)


def test_heads_to_keep_takes_the_top_scores_with_one_head_per_block():
    scores = [torch.tensor([0.1, 0.9, 0.2, 0.3]), torch.tensor([0.01, 0.02, 0.03, 0.04]), torch.tensor([5.0, 4, 3, 2])]
    keep = compression.heads_to_keep(scores, 5)
    assert keep == {0: [1], 1: [3], 2: [0, 1, 2]}  # block 1's best head survives though all its scores are low
    assert sum(len(v) for v in compression.heads_to_keep(scores, 12).values()) == 12
    with pytest.raises(ValueError, match="keep must be between 3"):
        compression.heads_to_keep(scores, 2)


def test_trimmed_vocabulary_matches_the_full_table_on_known_words_and_reads_unk_otherwise(tokenizer):
    model = tiny_bert()
    keep = compression.corpus_vocabulary(tokenizer, TEXTS)
    trimmed = compression.trim_vocabulary(model, keep, tokenizer.unk_token_id)
    assert trimmed.model.get_input_embeddings().num_embeddings == len(keep) < 100
    np.testing.assert_allclose(logits(trimmed, tokenizer), logits(model, tokenizer), atol=1e-5)
    unseen = ["an extraordinary spectacle"]
    ids, mask = compression.encode(tokenizer, unseen)
    known = np.isin(ids, keep.numpy())
    assert not known.all()
    as_unk = np.where(known, ids, tokenizer.unk_token_id)
    np.testing.assert_allclose(
        compression.TorchRunner(trimmed).logits(ids, mask),
        compression.TorchRunner(model).logits(as_unk, mask),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="must contain the \\[UNK\\] id"):
        compression.trim_vocabulary(model, keep[keep != tokenizer.unk_token_id], tokenizer.unk_token_id)


def test_dynamic_int8_quantizes_the_linear_layers_and_stays_close(tokenizer):
    model = tiny_bert()
    quantized = compression.dynamic_int8(model)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "Linear" in kinds and all(type(m) is not torch.nn.Linear for m in quantized.modules())
    ref, got = logits(model, tokenizer), logits(quantized, tokenizer)
    assert np.abs(ref - got).max() < 0.05
    assert type(model.bert.encoder.layer[0].intermediate.dense) is torch.nn.Linear  # the original is untouched


def test_onnx_export_matches_and_a_mismatch_is_refused(tmp_path, tokenizer):
    model = tiny_bert()
    sample = compression.encode(tokenizer, TEXTS)
    path = compression.export_onnx(model, tmp_path / "m.onnx", sample)
    runner = compression.OrtRunner(path, threads=1)
    other = compression.encode(tokenizer, ["a much longer sentence than any of the ones it was exported with, truly"])
    np.testing.assert_allclose(
        runner.logits(*other),
        logits(model, tokenizer, ["a much longer sentence than any of the ones it was exported with, truly"]),
        atol=1e-4,
    )  # dynamic length
    with pytest.raises(ValueError, match="differs from PyTorch by"):
        compression.check_export(compression.TorchRunner(tiny_bert(seed=1)), runner, sample, 1e-3)
    with pytest.raises(ValueError, match="is not available here"):
        compression.OrtRunner(path, engine="NoSuchExecutionProvider")
    assert list(tmp_path.iterdir()) == [path]  # one file, no temporaries left


def test_onnx_int8_shrinks_the_file_and_keeps_the_predictions(tmp_path, tokenizer):
    model = tiny_bert()
    sample = compression.encode(tokenizer, TEXTS)
    fp32 = compression.export_onnx(model, tmp_path / "m.onnx", sample)
    dynamic = compression.quantize_onnx(fp32, tmp_path / "d.onnx")
    static = compression.quantize_onnx(fp32, tmp_path / "s.onnx", "static", [sample])
    assert compression.file_bytes(dynamic) < 0.4 * compression.file_bytes(fp32)  # the embedding table too
    for path in (dynamic, static):
        got = compression.OrtRunner(path).logits(*sample)
        assert np.abs(got - logits(model, tokenizer)).max() < 0.1
    with pytest.raises(ValueError, match="needs calibration batches"):
        compression.quantize_onnx(fp32, tmp_path / "x.onnx", "static")
    with pytest.raises(ValueError, match="mode must be 'dynamic' or 'static'"):
        compression.quantize_onnx(fp32, tmp_path / "x.onnx", "int4")


def test_measure_counts_what_it_should(tmp_cache, tokenizer, frame):
    model = tiny_bert()
    teacher_preds = compression.predict_proba(compression.TorchRunner(model), tokenizer, frame["text"].tolist()).argmax(
        1
    )
    inputs = compression.latency_inputs(tokenizer, frame)
    row = compression.measure(
        "dense", compression.TorchRunner(model), tokenizer, frame, teacher_preds, inputs, repeats=(3, 2)
    )
    pruned = compression.make_pruning_permanent(compression.magnitude_prune(model, 0.5))
    sparse = compression.measure(
        "sparse", compression.TorchRunner(pruned), tokenizer, frame, teacher_preds, inputs, repeats=(3, 2)
    )
    assert row["params"] == modeling.count_parameters(model) and row["agreement"] == 1.0
    encoder = sum(m.weight.numel() for m, _ in compression.encoder_linears(model))
    assert row["nonzero"] - sparse["nonzero"] == pytest.approx(encoder / 2, abs=2)
    assert sparse["mb"] == row["mb"]  # zeros are stored like any number
    labels = frame["label"].to_numpy()
    assert row["accuracy"] == pytest.approx(float((teacher_preds == labels).mean()), abs=1e-4)
    assert 0 < row["b1_p95_ms"] and row["b1_ms"] <= row["b1_p95_ms"] and row["threads"] == torch.get_num_threads()


def test_ratios_and_pareto_front():
    table = pd.DataFrame(
        {
            "variant": ["a", "b", "c", "d"],
            "mb": [100, 50, 25, 60],
            "b1_ms": [10, 5, 2, 6],
            "b32_ms": [100, 50, 20, 60],
            "accuracy": [0.90, 0.89, 0.80, 0.85],
        }
    )
    ratios = compression.add_ratios(table, "a")
    assert ratios["size_x"].tolist() == [1.0, 0.5, 0.25, 0.6] and ratios["acc_drop_pts"].tolist()[1] == 1.0
    assert compression.pareto_front(table, "mb").tolist() == [True, True, True, False]  # d: b is smaller and better
    with pytest.raises(ValueError, match="reference 'z' is not a row"):
        compression.add_ratios(table, "z")


def test_saved_table_replaces_one_notebooks_rows_and_keeps_the_others(tmp_cache):
    with pytest.raises(ValueError, match="run notebooks/04_compression.ipynb first"):
        compression.load_table()
    first = pd.DataFrame({"variant": ["fp32", "int8"], "accuracy": [0.9, 0.89]})
    compression.save_table(first, "04_compression")
    compression.save_table(pd.DataFrame({"variant": ["student"], "accuracy": [0.85]}), "04_distillation")
    compression.save_table(first.assign(accuracy=[0.91, 0.9]), "04_compression")
    table = compression.load_table()
    assert table["variant"].tolist() == ["fp32", "int8", "student"] and table["accuracy"].tolist()[0] == 0.91
    assert json.loads(compression.table_path().read_text())[2]["source"] == "04_distillation"


def test_distillation_loss_against_a_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3) * 2
    labels = torch.tensor([0, 2, -1, 1, -1])
    p_t = torch.softmax(t / 3, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    ce = torch.nn.functional.cross_entropy(s[[0, 1, 3]], labels[[0, 1, 3]])
    assert distillation.distillation_loss(s, t, labels, 3.0, 0.25) == pytest.approx(float(0.25 * kl + 0.75 * ce), 1e-6)
    only_unlabelled = torch.full((5,), -1)
    assert distillation.distillation_loss(s, t, only_unlabelled, 3.0, 0.25) == pytest.approx(float(0.25 * kl), 1e-6)


def test_student_keeps_the_teachers_blocks_and_refuses_to_grow():
    teacher = tiny_bert(layers=3)
    student = distillation.student_from_teacher(teacher, [2, 0])
    assert len(compression.blocks(student)) == 2 and student.config.num_hidden_layers == 2
    for mine, theirs in zip(
        compression.blocks(student), [compression.blocks(teacher)[0], compression.blocks(teacher)[2]], strict=True
    ):
        assert all(
            torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True)
        )
    with pytest.raises(ValueError, match="must be smaller than its teacher"):
        distillation.student_from_teacher(teacher, [0, 1, 2])
    with pytest.raises(ValueError, match="distinct block ids"):
        distillation.student_from_teacher(teacher, [0, 0])


def test_distillation_trains_on_the_teachers_logits_and_caches_by_everything(tmp_cache, tokenizer, frame):
    teacher = tiny_bert(layers=3)
    student = distillation.student_from_teacher(teacher, [0, 2])
    soft = distillation.teacher_logits(teacher, tokenizer, frame["text"].tolist())
    np.testing.assert_allclose(soft, logits(teacher, tokenizer, frame["text"].tolist()), atol=1e-5)
    recipe = distillation.Recipe(epochs=1, lr=1e-3, batch_size=8, max_length=32, alpha=1.0)
    kd = distillation.distill(student, tokenizer, frame, recipe, soft, progress=False)
    agree_before = (logits(student, tokenizer, frame["text"].tolist()).argmax(1) == soft.argmax(1)).mean()
    assert kd.trained_now and len(kd.losses) == 3
    assert not distillation.distill(student, tokenizer, frame, recipe, soft, progress=False).trained_now
    assert distillation.distill(student, tokenizer, frame, recipe, soft * 2, progress=False).trained_now  # the logits
    labels_only = distillation.Recipe(epochs=1, lr=1e-3, batch_size=8, max_length=32, alpha=0.0)
    assert distillation.distill(student, tokenizer, frame, labels_only, soft, progress=False).trained_now
    assert agree_before <= 1.0
    unlabelled = frame.assign(label=-1)
    with pytest.raises(ValueError, match="need the teacher's logits"):
        distillation.distill(student, tokenizer, unlabelled, labels_only, None, progress=False)
    distillation.distill(student, tokenizer, unlabelled, recipe, soft, progress=False)  # soft term only: no error


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 2),
        ("lr", 2e-3),
        ("batch_size", 4),
        ("max_length", 16),
        ("seed", 1),
        ("warmup_ratio", 0.1),
        ("temperature", 3.0),
        ("alpha", 0.3),
    ],
)
def test_every_recipe_field_changes_the_run_key(field, value):
    base = distillation.Recipe(epochs=1, lr=1e-3, batch_size=8, max_length=32)
    changed = distillation.Recipe(**{**distillation.recipe_summary(base), field: value})
    assert distillation.run_key("distill", base) != distillation.run_key("distill", changed)


def test_bad_recipes_are_refused():
    for kwargs, message in [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": 1.5}, "lr must be in"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"alpha": 2}, "alpha must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            distillation.Recipe(**kwargs)


def test_lora_trains_only_the_adapters_and_the_head(tmp_cache, tokenizer, frame):
    recipe = distillation.Recipe(epochs=1, lr=1e-3, batch_size=8, max_length=32)
    run = distillation.peft_finetune("lora", tokenizer, frame, recipe, rank=4, progress=False)
    names = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert run.trainable / modeling.count_parameters(run.model) < 0.02
    again = distillation.peft_finetune("lora", tokenizer, frame, recipe, rank=4, progress=False)
    assert not again.trained_now
    texts = frame["text"].tolist()
    np.testing.assert_allclose(logits(again.model, tokenizer, texts), logits(run.model, tokenizer, texts), atol=1e-5)
    with pytest.raises(ValueError, match="unknown peft method 'prefix'"):
        distillation.peft_finetune("prefix", tokenizer, frame, recipe, progress=False)
    assert store.key(1) != store.key(1.0)  # the keys above rest on typed hashing
