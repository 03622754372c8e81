"""Chapter 06's attacks and defences: the greedy search finds and edits the word a known model relies on, stays
within its budget and counts its queries; lock-step batching changes nothing; the report counts success only over
sentences the model got right; typos are one edit; the corrector undoes them; PGD stays in its ball and raises the
loss; bad input gets one line. Nothing here is trained: a keyword model and a 3-layer random BERT stand in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_compression import tiny_bert

from course_utils import robustness

WEIGHTS = {"great": 3.0, "fine": 1.0, "awful": -3.0, "dull": -1.5}


class KeywordVictim(robustness.Victim):
    """p(positive) = sigmoid(sum of known words' weights): the word that matters is known."""

    def __init__(self):
        self.queries = 0
        self.preprocess = None

    def __call__(self, texts):
        self.queries += len(texts)
        logit = np.array([sum(WEIGHTS.get(w.strip(".,!").lower(), 0.0) for w in t.split()) for t in texts])
        p = 1 / (1 + np.exp(-logit))
        return np.stack([1 - p, p], axis=1)


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment): a swap of neighbouring letters counts as one edit."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


@pytest.fixture(scope="module")
def model():
    return tiny_bert(seed=5)


def test_char_attack_edits_the_word_the_model_relies_on_and_flips_it():
    victim = KeywordVictim()
    [res] = robustness.char_attack(victim, ["A great film with a plot."], [1], budget=0.25, seed=0, progress=False)
    assert res.success and res.changed == 1
    changed = [(a, b) for a, b in zip(res.original.split(), res.adversarial.split(), strict=True) if a != b]
    assert [a for a, _ in changed] == ["great"] and edit_distance(*changed[0]) == 1
    assert res.queries == victim.queries  # every sentence the attack asked about is counted
    assert res.queries == 1 + 6 + len(robustness.typo_candidates("great", 8, np.random.default_rng(0)))


def test_budget_bounds_the_changed_words_and_zero_changes_nothing():
    victim = KeywordVictim()
    text = "great great great great fine fine film film"  # needs many edits to flip
    for budget, limit in [(0.0, 0), (0.25, 2), (0.5, 4)]:
        [res] = robustness.char_attack(victim, [text], [1], budget=budget, progress=False)
        assert res.changed <= limit and robustness.max_changes(8, budget) == limit
        if budget == 0:
            assert res.adversarial == text and not res.success
    assert robustness.max_changes(3, 0.1) == 1  # any positive budget allows one word


def test_lock_step_batching_gives_what_one_by_one_gives():
    texts = ["great film", "an awful, dull film", "fine but dull", "great great fine", "awful"]
    labels = [1, 0, 0, 1, 0]
    together = robustness.char_attack(KeywordVictim(), texts, labels, 0.5, seed=3, progress=False)
    # the typos are seeded per sentence position: run each alone with its position's generator
    alone = [
        robustness.run_searches(
            KeywordVictim(),
            [robustness.greedy_search(t, y, 0.5, _typos(i, 3))],
            progress=False,
        )[0]
        for i, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]
    assert [(r.adversarial, r.queries, r.adv_pred) for r in together] == [
        (r.adversarial, r.queries, r.adv_pred) for r in alone
    ]


def _typos(i: int, seed: int):
    rng = np.random.default_rng([seed, i])
    return lambda words, position: robustness.typo_candidates(words[position], 8, rng)


def test_summary_counts_success_only_over_sentences_the_model_got_right():
    def rec(label, clean, adv, changed=1):
        return robustness.Attacked("a b c d", "a b c d", label, clean, adv, 0.9, 0.1, changed, 4, 10)

    results = [rec(1, 1, 0), rec(1, 1, 1, 0), rec(0, 1, 1, 0), rec(0, 0, 1, 2)]  # the third was wrong already
    out = robustness.summarise(results)
    assert out["clean_accuracy"] == 0.75
    assert out["success_rate"] == pytest.approx(2 / 3)  # not 2/4
    assert out["attacked_accuracy"] == 0.25
    assert out["words_changed"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    with pytest.raises(ValueError, match="no attack results"):
        robustness.summarise([])


def test_each_typo_is_one_edit_that_keeps_the_outer_letters():
    rng = np.random.default_rng(0)
    for op in robustness.TYPO_OPS:
        for word in ["wonderful", "plot", "bad"]:
            out = robustness.typo(word, op, rng)
            assert edit_distance(word, out) == 1
            if len(word) >= 4:
                assert out[0] == word[0] and out[-1] == word[-1]
    assert robustness.typo_candidates("(great!", 4, rng)[0].startswith("(")
    assert robustness.typo_candidates("...", 4, rng) == []
    assert robustness.random_typos(["a great film"], 0.0) == ["a great film"]
    noisy = robustness.random_typos(["the great film was dull"] * 3, 1.0, seed=1)
    assert all(a != b for a, b in zip(noisy[0].split(), "the great film was dull".split(), strict=True))
    assert noisy == robustness.random_typos(["the great film was dull"] * 3, 1.0, seed=1)


def test_corrector_undoes_typos_and_leaves_known_words():
    fix = robustness.TypoCorrector(["a stunning film", "a stunning plot", "stunned"])
    assert fix("A stunniyg film, a stunnnig plot.") == "A stunning film, a stunning plot."
    assert fix("Stunnign!") == "Stunning!"
    assert fix("a stunned film") == "a stunned film"  # known words are never changed
    assert fix("qqqqq") == "qqqqq" and fix("stnnnig") == "stnnnig"  # nothing one edit away: left alone
    with pytest.raises(ValueError, match="vocabulary is empty"):
        robustness.TypoCorrector(["123 456"])


def test_neighbours_follow_the_embeddings_and_filter_part_of_speech(model, tokenizer):
    table = model.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        for word in ["great", "superb", "quickly", "the"]:  # adjectives, an adverb and a stop word, all one vector
            table[vocab[word]] = table[vocab["good"]] + 1e-4 * torch.randn(table.shape[1])
    near = robustness.Neighbours(model, tokenizer, k=10)("good")
    assert "great" in near and "superb" in near
    assert "quickly" not in near and "the" not in near  # another part of speech; a stop word
    assert robustness.Neighbours(model, tokenizer)("Good")[0][0].isupper()
    assert robustness.Neighbours(model, tokenizer)("not") == []  # negations are stop words: never swapped


def test_word_attack_respects_the_similarity_bound(model, tokenizer):
    victim = KeywordVictim()
    neighbours = robustness.Neighbours(model, tokenizer, k=5, min_cosine=-1.0)
    encoder = robustness.SentenceEncoder(model.bert, tokenizer)
    free = robustness.word_attack(victim, ["a great film"], [1], neighbours, encoder, 1.0, min_similarity=0.0,
                                  progress=False)  # fmt: skip
    bound = robustness.word_attack(victim, ["a great film"], [1], neighbours, encoder, 1.0, min_similarity=1.0,
                                   progress=False)  # fmt: skip
    assert free[0].changed >= 1 and bound[0].changed == 0 and bound[0].adversarial == "a great film"
    with pytest.raises(ValueError, match="min_similarity must be in"):
        robustness.word_attack(victim, ["a great film"], [1], neighbours, encoder, 0.2, min_similarity=1.5)


def test_pgd_stays_in_its_ball_and_raises_the_loss(model, tokenizer):
    frame = pd.DataFrame({"text": ["a great film", "an awful, dull and long film"], "label": [1, 0]})
    batch = next(robustness.modeling.batches(frame, tokenizer, 2, 32))
    embeds = robustness.embed(model, batch["input_ids"]).detach()
    mask = batch["attention_mask"]
    delta = robustness.pgd_delta(model, embeds, mask, batch["labels"], epsilon=0.5, steps=5)
    norms = delta.norm(dim=-1)
    assert (norms <= 0.5 + 1e-5).all() and (norms[mask == 0] == 0).all()

    def loss(d):
        with torch.no_grad():
            out = model(inputs_embeds=embeds + d, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(out, batch["labels"]).item()

    assert loss(delta) > loss(torch.zeros_like(delta))
    clean = (robustness.modeling.predict_proba(model, tokenizer, frame.text.tolist()).argmax(1) == frame.label).mean()
    assert robustness.pgd_accuracy(model, tokenizer, frame, 0.0, steps=2) == pytest.approx(clean)


def test_sentiment_kept_reads_the_pairs_with_vader():
    def rec(orig, adv, label):
        return robustness.Attacked(orig, adv, label, label, 1 - label, 0.9, 0.1, 1, 3, 5)

    out = robustness.sentiment_kept(
        [rec("a great film", "a grewt film", 1), rec("a great film", "a terrible film", 1), rec("a film", "a flim", 1)],
        preprocess=lambda t: t.replace("grewt", "great"),
    )
    assert out == {"successes": 3.0, "readable_by_vader": 2.0, "kept_share": 0.5}  # the neutral one is not readable


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: robustness.char_attack(v, ["a film"], [1], budget=-0.1), "budget is the share"),
        (lambda v: robustness.char_attack(v, ["a film"], [1], budget=1.5), r"in \[0, 1\]"),
        (lambda v: robustness.char_attack(v, ["a film"], [1], budget=True), "budget is the share"),
        (lambda v: robustness.run_attack("genetic", v, ["a film"], [1]), "unknown attack 'genetic'"),
        (lambda v: robustness.run_attack("word", v, ["a film"], [1]), "the word attack needs neighbours"),
        (lambda v: robustness.char_attack(v, [], []), "the sentence list is empty"),
        (lambda v: robustness.char_attack(v, ["a film", "  "], [1, 0]), "a sentence is empty"),
        (lambda v: robustness.char_attack(v, "a film", [1]), "got one string"),
        (lambda v: robustness.char_attack(v, ["a film"], [1, 0]), "one label per sentence"),
        (lambda v: robustness.domain_split("reddit", 100), "unknown target domain 'reddit'"),
        (lambda v: robustness.domain_split("movie", 100), "unknown target domain 'movie'"),
        (lambda v: robustness.domain_split("tweets", 0), "test_size must be in"),
        (lambda v: robustness.typo("film", "rotate", np.random.default_rng(0)), "unknown typo"),
        (lambda v: robustness.random_typos(["a"], 2.0), "rate is the share"),
        (lambda v: robustness.AdvRecipe(method="freelb"), "unknown method"),
        (lambda v: robustness.AdvRecipe(lr=2.0), "lr must be in"),
        (lambda v: robustness.attack_table({}, ["a"], [1]), "no victims"),
    ],
)
def test_bad_input_gets_one_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call(KeywordVictim())
    assert "\n" not in str(err.value)


def test_augmenting_without_attack_outputs_is_refused(model, tokenizer):
    frame = pd.DataFrame({"text": ["a great film"], "label": [1]})
    with pytest.raises(ValueError, match="needs adversarial= rows"):
        robustness.adversarial_finetune(model, tokenizer, frame, robustness.AdvRecipe(method="augment"), None)


def test_cache_keys_change_with_every_argument(model):
    rows = pd.DataFrame({"text": ["a great film", "an awful film"], "label": [1, 0]})
    test = pd.DataFrame({"text": ["a fine film"], "label": [1]})
    recipe = robustness.AdvRecipe(method="clean")
    base = robustness.adversarial_key(model, rows, recipe)
    assert robustness.adversarial_key(model, rows, recipe) == base
    assert robustness.adversarial_key(tiny_bert(seed=6), rows, recipe) != base
    assert robustness.adversarial_key(model, rows.assign(label=[0, 1]), recipe) != base
    assert robustness.adversarial_key(model, rows, robustness.AdvRecipe(method="pgd")) != base
    assert robustness.adversarial_key(model, rows, robustness.AdvRecipe(method="pgd", epsilon=0.1)) != (
        robustness.adversarial_key(model, rows, robustness.AdvRecipe(method="pgd"))
    )
    small = robustness.small_recipe(2, seed=0)
    args = (model, rows, test, small)
    key = robustness.transfer_key(*args)
    changed = [
        (tiny_bert(seed=6), rows, test, small),
        (model, rows.head(1), test, small),
        (model, rows, test.assign(label=[0]), small),
        (model, rows, test, robustness.small_recipe(2, seed=1)),
    ]
    assert all(robustness.transfer_key(*c) != key for c in changed)


def test_a_transfer_run_is_cached_and_not_retrained(model, tokenizer, tmp_cache, monkeypatch):
    rows = pd.DataFrame({"text": ["a great film", "an awful film"] * 2, "label": [1, 0] * 2})
    recipe = robustness.distillation.Recipe(epochs=1, batch_size=2, alpha=0)
    first = robustness.transfer_run(model, "start", tokenizer, "tweets", rows, rows.head(2), recipe)
    assert first.steps == 2 and 0 <= first.accuracy <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run must not train again")

    monkeypatch.setattr(robustness.distillation, "train_loop", no_training)
    again = robustness.transfer_run(model, "start", tokenizer, "tweets", rows, rows.head(2), recipe)
    assert again == first
    renamed = robustness.transfer_run(model, "other name", tokenizer, "nyt", rows, rows.head(2), recipe)
    assert (renamed.start, renamed.domain, renamed.accuracy) == ("other name", "nyt", first.accuracy)
