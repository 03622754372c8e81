"""Chapter 05's explainers: attention by hand equals the model's, IG by hand equals Captum's and is complete, word
scores land on the right words, faithfulness ranks a right explanation above a wrong one, LIME and SHAP find the
word a known model uses, patching restores what it must, and bad input gets one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerIntegratedGradients
from test_compression import tiny_bert

from course_utils import explain
from course_utils.checks import ch05

TEXT = "A great film, but the ending isn't earned."


@pytest.fixture(scope="module")
def model():
    return tiny_bert(seed=3)


def test_manual_attention_equals_the_models_maps_in_every_layer(model, tokenizer):
    enc = explain.encode(model, tokenizer, TEXT)
    maps = explain.attentions(model, enc)  # (L, H, T, T)
    assert maps.shape == (3, 4, enc.ids.shape[1], enc.ids.shape[1])
    for layer in range(3):
        torch.testing.assert_close(explain.manual_attention(model, enc, layer), maps[layer], atol=1e-6, rtol=1e-5)
    flow = explain.rollout(maps)
    torch.testing.assert_close(flow.sum(-1), torch.ones(flow.shape[0]))
    identity = torch.eye(5).expand(2, 4, 5, 5)  # tokens attending only to themselves: rollout is the identity
    torch.testing.assert_close(explain.rollout(identity), torch.eye(5))


def test_word_scores_sum_each_words_tokens_and_drop_special_tokens(model, tokenizer):
    enc = explain.encode(model, tokenizer, TEXT)
    assert enc.words == TEXT.split()
    assert enc.word_of_token[0] == -1 and enc.word_of_token[-1] == -1  # [CLS], [SEP]
    isnt = [t for t, w in zip(enc.tokens, enc.word_of_token, strict=True) if w == enc.words.index("isn't")]
    assert "".join(isnt).replace("#", "") == "isn't"  # isn ' t: three tokens, one word
    scores = explain.word_scores(np.ones(len(enc.tokens)), enc)
    assert scores.sum() == len(enc.tokens) - 2 and scores[enc.words.index("isn't")] == len(isnt)


def test_ig_by_hand_equals_captum_and_is_complete(model, tokenizer):
    enc = explain.encode(model, tokenizer, TEXT)
    hand = explain.ig_by_hand(model, tokenizer, enc, 1, steps=16)
    lig = LayerIntegratedGradients(explain._probability(model, 1), model.base_model.embeddings)
    captum = lig.attribute(
        enc.ids,
        baselines=explain.baseline_ids(enc, tokenizer.pad_token_id),
        additional_forward_args=(enc.mask,),
        n_steps=16,
        method="riemann_middle",
    ).sum(-1)[0]
    np.testing.assert_allclose(hand, captum.detach().numpy(), atol=1e-6)
    found = explain.integrated_gradients(model, tokenizer, enc, 1, steps=8, tolerance=0.01)
    assert found.extra["relative_delta"] <= 0.01
    assert found.scores.sum() == pytest.approx(found.extra["gap"], abs=0.01 * abs(found.extra["gap"]) + 1e-6)


def test_faithfulness_prefers_the_right_explanation_and_equals_the_exercise_reference():
    words = "a great and moving film with a dull plot".split()
    truth = np.array([ch05._WEIGHTS.get(w, 0.0) for w in words])
    right = explain.faithfulness(ch05.toy_predict, words, truth, 1)
    wrong = explain.faithfulness(ch05.toy_predict, words, -truth, 1)
    assert right["comprehensiveness"] > wrong["comprehensiveness"] + 0.1
    assert right["sufficiency"] < wrong["sufficiency"] - 0.1
    assert right["comprehensiveness"] == pytest.approx(
        ch05.comprehensiveness_reference(ch05.toy_predict, words, truth, 1), abs=1e-9
    )
    with pytest.raises(ValueError, match="one score per word"):
        explain.faithfulness(ch05.toy_predict, words, truth[:-1], 1)


class ToyPredict:
    """The checks' bag-of-words model with a call counter, as the perturbation explainers expect."""

    calls = 0

    def __call__(self, texts):
        self.calls += len(texts)
        return ch05.toy_predict(list(texts))


@pytest.mark.parametrize("name", ["lime", "shap"])
def test_perturbation_explainers_find_the_word_a_known_model_uses(name):
    text = "the plot was awful but the cast tried"
    enc = explain.Encoded(text, text.split(), torch.zeros(1, 1), torch.ones(1, 1), [], [])
    predict = ToyPredict()
    make = explain.lime_explanation if name == "lime" else explain.shap_explanation
    found = make(predict, enc, 0, 200, 0)
    assert enc.words[int(np.argmax(found.scores))] == "awful"  # the one word with a large weight towards class 0
    assert found.model_calls == predict.calls > 0 and found.scores.shape == (len(enc.words),)


def test_counterfactuals_negate_swap_and_rename():
    edits = dict(explain.counterfactuals("The acting is good and Tom Hanks shines."))
    assert edits["negation"] == "The acting is not good and Tom Hanks shines."
    assert edits["sentiment swap"] == "The acting is bad and Tom Hanks shines."
    assert "Tom" not in edits["name swap"] and edits["name swap"].split()[5] in explain.NAMES
    assert explain.counterfactuals("Great!")[0] == ("sentiment swap", "Awful!")
    table = explain.counterfactual_table(ch05.toy_predict, ["a great film", "it is fun"])
    assert set(table["kind"]) == {"sentiment swap", "negation"}
    assert (table.loc[table["kind"] == "sentiment swap", "change"] < 0).all()  # great -> awful, fun -> tedious
    with pytest.raises(ValueError, match="no sentence could be edited"):
        explain.counterfactual_table(ch05.toy_predict, ["zzz"])


def test_patching_restores_what_it_must(model, tokenizer):
    table = explain.patch_components(model, tokenizer, "a great film", "a awful film", 1)
    assert table.attrs["changed"] == [2] and table.attrs["tokens"][2] == "great"
    spots = table[table["head"] == -1].set_index(["layer", "position"])["restored"]
    assert spots[(2, 0)] == pytest.approx(1.0, abs=1e-4)  # the last layer's [CLS] vector is all the classifier reads
    for position in (1, 2, 3, 4):  # and nothing else of the last layer: other positions restore exactly nothing
        assert spots[(2, position)] == pytest.approx(0.0, abs=1e-4)
    assert abs(spots[(0, 2)]) > 0.05  # in the first layer, the swapped word's own position carries the swap
    heads = table[table["head"] >= 0]
    assert len(heads) == 3 * 4 and heads["restored"].notna().all()
    with pytest.raises(ValueError, match="same number of tokens"):
        explain.patch_components(model, tokenizer, "a great film", "a truly awful film", 1)


def test_vader_scores_read_the_lexicon():
    scores = explain.vader_scores(["Good,", "bad", "table"])
    assert scores[0] > 1 and scores[1] < -1 and scores[2] == 0


def test_explanation_shift_of_a_model_with_itself_is_perfect(model, tokenizer):
    shift = explain.explanation_shift({"a": model, "b": tiny_bert(seed=4)}, tokenizer, [TEXT, "dull and long"], "a")
    assert shift.loc["a", "spearman"] == pytest.approx(1.0) and shift.loc["a", "top3_overlap"] == 1.0
    assert shift.loc["b", "spearman"] < 0.999


def test_heat_map_escapes_html_and_the_explorer_renders(model, tokenizer):
    html = explain.heat_html(["<b>bold</b>", "ok"], np.array([1.0, -0.5]))
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "rgba(38,139,210,0.50)" in html
    widget = explain.explorer(model, tokenizer, ["a fine film", "dull and long"], samples=20)
    shown = widget.children[-1].value
    assert "integrated_gradients" in shown and "fine" in shown
    widget.children[0].value = ""  # an empty sentence: the error is shown, not raised
    assert "text is empty" in widget.children[-1].value


def test_bad_input_gets_one_line(model, tokenizer):
    enc = explain.encode(model, tokenizer, TEXT)
    cases = [
        (lambda: explain.encode(model, tokenizer, " "), "text is empty"),
        (lambda: explain.encode(model, tokenizer, "word " * 200), "the model reads at most 128"),
        (lambda: explain.grad_x_input(model, enc, 2), "target class 2 does not exist"),
        (lambda: explain.integrated_gradients(model, tokenizer, enc, -1), "target class -1 does not exist"),
        (lambda: explain.explain(model, tokenizer, TEXT, methods=["saliency"]), "unknown explainer 'saliency'"),
        (lambda: explain.manual_attention(model, enc, 3), "layer 3 does not exist"),
        (lambda: explain.explorer(model, tokenizer, []), "sentences is empty"),
        (lambda: explain.explanation_shift({"a": model}, tokenizer, [TEXT], "b"), "reference 'b' is not one"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
