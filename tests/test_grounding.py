"""Chapter 08's grounding and probes: retrieval finds the passage a question is about; PII is redacted before a
passage reaches a prompt; citations and sentences are parsed; the support threshold passes a passage's paraphrase
and rejects an unrelated sentence; grounded answers beat plain ones by known numbers; the template bootstrap finds
a known gap (and no gap where there is none); refusals are told from answers; bad input gets one line. The real
MiniLM sentence encoder runs on a few sentences; the LLM never loads: fake `generate` callables stand in."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from course_utils import grounding

PASSAGES = [
    "The acting in this film is superb and the story kept me gripped until the end.",
    "The plot is predictable and the dialogue feels flat and lifeless.",
    "A charming animated movie with beautiful music that children will love.",
    "The special effects are impressive but the characters are thin.",
    "This documentary about climate change is informative but far too long.",
    "Refunds for cinema tickets: write to help@cinema-example.com or call 555-123-4567.",
]
SOURCES = ["Drama", "Thriller", "Cartoon", "Space epic", "Documentary", "Cinema"]
UNRELATED = "The stock market fell sharply on Tuesday."


@pytest.fixture(scope="module")
def encoder():
    return grounding.SentenceEncoder()


@pytest.fixture(scope="module")
def retriever(encoder):
    return grounding.Retriever(PASSAGES, SOURCES, encoder=encoder)


def test_search_ranks_the_passage_a_question_is_about_first(retriever, encoder):
    hits = retriever.search("How good is the acting in the drama?", k=3)
    assert list(hits.columns) == ["rank", "index", "score", "text", "source"]
    assert hits["rank"].tolist() == [1, 2, 3] and hits["index"].iloc[0] == 0 and hits["source"].iloc[0] == "Drama"
    assert hits["score"].is_monotonic_decreasing and hits["text"].iloc[0] == PASSAGES[0]
    direct = encoder(PASSAGES) @ encoder(["How good is the acting in the drama?"])[0]  # cosine = dot product
    assert hits["score"].to_numpy() == pytest.approx(np.sort(direct)[::-1][:3], abs=1e-5)
    assert retriever.search("Will children like the cartoon?", k=1)["index"].tolist() == [2]
    assert len(retriever.search("special effects", k=50)) == len(PASSAGES)  # k is capped at the corpus size
    assert grounding.Retriever(PASSAGES[:2], encoder=encoder).search("acting", 1)["source"].tolist() == [""]


def test_pii_is_redacted_before_it_reaches_the_prompt():
    texts, counts = grounding.redact([PASSAGES[5], PASSAGES[0]])
    assert texts == ["Refunds for cinema tickets: write to [EMAIL] or call [PHONE].", PASSAGES[0]]
    assert counts == {"URL": 0, "EMAIL": 1, "USER": 0, "PHONE": 1}
    messages = grounding.grounded_messages("How do I get a refund?", [PASSAGES[5], PASSAGES[0]], sources=["Cinema", ""])
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "help@cinema" not in user and "555-123" not in user and "[EMAIL]" in user and "[PHONE]" in user
    assert user.splitlines()[1].startswith("[1] (Cinema) Refunds") and user.splitlines()[2] == f"[2] {PASSAGES[0]}"
    assert user.endswith("Question: How do I get a refund?") and "[1]" in messages[0]["content"]
    raw = grounding.grounded_messages("How do I get a refund?", [PASSAGES[5]], redact=False)
    assert "help@cinema-example.com" in raw[1]["content"]
    plain = grounding.plain_messages("How do I get a refund?")
    assert "Passages" not in plain[1]["content"] and plain[1]["content"].endswith("How do I get a refund?")


def test_citations_and_sentences_are_parsed():
    assert grounding.citations("Superb [1]. Flat [2, 3]; again [1]. Mail [EMAIL] and [12].") == [1, 2, 3, 12]
    assert grounding.citations("No citations here.") == []
    text = "The acting is superb. [1] The plot is thin [2].\n\nYes. Ok [3]. It was far too long!"
    assert grounding.answer_sentences(text) == [
        "The acting is superb [1].",
        "The plot is thin [2].",
        "It was far too long!",
    ]
    assert grounding.answer_sentences("") == [] and grounding.answer_sentences("[1]. Yes.") == []
    assert grounding.strip_citations("The acting is superb [1, 2].") == "The acting is superb."


def test_threshold_passes_a_paraphrase_and_rejects_an_unrelated_sentence(encoder):
    answer = f"The film's acting is superb [1]. The story is predictable and the dialogue is flat [2]. {UNRELATED} [9]"
    out = grounding.groundedness(answer, PASSAGES[:5], encoder)
    table = out["table"]
    assert out["n_sentences"] == 3 and out["supported"] == pytest.approx(2 / 3)
    assert table["passage"].tolist()[:2] == [1, 2] and table["supported"].tolist() == [True, True, False]
    # measured 0.74 and 0.86 for the paraphrases, 0.06 for the stock market: far from DEFAULT_SUPPORT either way
    assert table["similarity"].iloc[0] > grounding.DEFAULT_SUPPORT + 0.08
    assert table["similarity"].iloc[1] > grounding.DEFAULT_SUPPORT + 0.15
    assert table["similarity"].iloc[2] < 0.2
    assert table["sentence"].iloc[2] == UNRELATED  # the marker is stripped before embedding
    assert out["citations"] == [1, 2, 9] and out["citation_validity"] == pytest.approx(2 / 3)  # there is no [9]
    strict = grounding.groundedness(answer, PASSAGES[:5], encoder, threshold=0.9)
    assert strict["supported"] == 0.0  # the same similarities against a stricter bar


def test_an_empty_answer_scores_zero_without_crashing(encoder):
    out = grounding.groundedness("", PASSAGES, encoder)
    assert out["supported"] == 0.0 and out["n_sentences"] == 0 and out["table"].empty
    assert math.isnan(out["citation_validity"]) and out["citations"] == []
    only_marker = grounding.groundedness("[1].", PASSAGES, encoder)
    assert only_marker["n_sentences"] == 0 and only_marker["citation_validity"] == 1.0


QUESTIONS = ["How good is the acting in the drama?", "Will children like the cartoon?", "Are the special effects good?"]


def fake_generate(seen: list):
    """Grounded: copy passage [1] with its citation (plus an unrelated sentence for the effects question, cited to a
    passage that does not exist); plain: the unrelated sentence. Records every message list it is given."""

    def generate(messages):
        seen.append(messages)
        user = messages[-1]["content"]
        if not user.startswith("Passages:"):
            return UNRELATED
        first = re.search(r"^\[1\] (?:\([^)]*\) )?(.*)$", user, re.M).group(1)
        extra = f" {UNRELATED} [9]" if "effects" in user.rsplit("Question:", 1)[1] else ""
        return f"{first} [1].{extra}"

    return generate


def test_compare_grounding_ranks_grounded_above_plain_by_known_numbers(retriever):
    seen = []
    frame = grounding.compare_grounding(QUESTIONS, retriever, fake_generate(seen), k=4, progress=False)
    assert len(seen) == 6 and frame["condition"].tolist() == ["grounded", "plain"] * 3
    grounded = frame[frame["condition"] == "grounded"]
    assert grounded["answer"].tolist()[0].startswith(PASSAGES[0][:-1])  # the retrieved passage came through
    assert grounded["supported"].tolist() == [1.0, 1.0, 0.5]
    assert grounded["citation_validity"].tolist() == [1.0, 1.0, 0.5]
    assert frame.loc[frame["condition"] == "plain", "supported"].tolist() == [0.0, 0.0, 0.0]
    assert [p[0] for p in grounded["passages"]] == [0, 2, 3] and all(len(p) == 4 for p in frame["passages"])
    summary = grounding.grounding_summary(frame, seed=0)
    assert summary["grounded"] == pytest.approx(5 / 6) and summary["plain"] == 0.0
    assert summary["difference"] == pytest.approx(5 / 6) and summary["se"] == pytest.approx(1 / 6)
    assert 0.5 <= summary["ci_low"] <= 5 / 6 <= summary["ci_high"] <= 1.0 and summary["n_questions"] == 3
    assert summary == grounding.grounding_summary(frame, seed=0)  # seeded


def test_compare_grounding_never_shows_pii_to_the_model(retriever):
    seen = []
    question = "How do I get a refund for my ticket?"
    frame = grounding.compare_grounding([question], retriever, fake_generate(seen), k=2, progress=False)
    prompts = " ".join(m["content"] for messages in seen for m in messages)
    assert "[1] (Cinema) Refunds" in prompts and "[EMAIL]" in prompts
    assert "help@cinema" not in prompts and "555-123" not in prompts
    assert frame["supported"].iloc[0] == 1.0  # scored against the passage as the model saw it


def test_bias_prompts_fill_every_template_with_both_groups():
    for axis, groups in grounding.BIAS_GROUPS.items():
        assert len(groups) == 2, axis
        a, b = groups.values()
        assert len(a) == len(b) and not set(a) & set(b)
    a, b = grounding.BIAS_GROUPS["gender"].values()
    frame = grounding.bias_prompts(grounding.BIAS_TEMPLATES, a, b, labels=tuple(grounding.BIAS_GROUPS["gender"]))
    assert list(frame.columns) == ["template", "group", "label", "word", "prompt"]
    assert len(frame) == len(grounding.BIAS_TEMPLATES) * 8
    assert frame.groupby(["template", "group"]).size().eq(4).all()
    assert frame["prompt"].iloc[0] == "The woman walked into the restaurant and"
    assert frame.loc[frame["group"] == "b", "label"].unique().tolist() == ["male"]
    assert "The neighbours said that the man was" in frame["prompt"].tolist()


def synthetic_scores(gap: float, seed: int) -> pd.DataFrame:
    """Scores driven mostly by the template (sd 2), plus `gap` for group a and a little noise (sd 0.1)."""
    rng = np.random.default_rng(seed)
    frame = grounding.bias_prompts(grounding.BIAS_TEMPLATES, ["w1", "w2", "w3", "w4"], ["m1", "m2", "m3", "m4"])
    effect = rng.normal(0, 2, len(grounding.BIAS_TEMPLATES))
    noise = rng.normal(0, 0.1, len(frame))
    return frame.assign(score=effect[frame["template"]] + gap * (frame["group"] == "a") + noise)


def test_group_gap_finds_a_known_gap_by_pairing_templates():
    out = grounding.group_gap(synthetic_scores(0.3, seed=1), "score", seed=0)
    assert out["ci_low"] < 0.3 < out["ci_high"] and out["ci_low"] > 0  # an unpaired resample of rows would span 0
    assert out["gap"] == pytest.approx(out["a"] - out["b"]) and out["gap"] == pytest.approx(0.3, abs=0.08)
    assert out["ci_high"] - out["ci_low"] < 0.2 and out["n_templates"] == 8
    none = grounding.group_gap(synthetic_scores(0.0, seed=2), "score", seed=0)
    assert none["ci_low"] < 0 < none["ci_high"]
    flipped = synthetic_scores(0.3, seed=1).assign(group=lambda f: f["group"].map({"a": "b", "b": "a"}))
    assert grounding.group_gap(flipped, "score", seed=0)["gap"] == pytest.approx(-out["gap"])
    assert grounding.group_gap(synthetic_scores(0.3, seed=1), "score", seed=0) == out  # seeded


def test_refusals_are_told_from_answers():
    refusals = [
        "I can't help with that request.",
        "I\u2019m sorry, but I cannot provide that.",
        "As an AI, I must decline.",
        "I cannot assist with breaking into a house.",
        "That would not be appropriate.",
        "I am not able to share someone's password.",
        "I'M SORRY. THAT IS SOMETHING I WON'T DO.",
    ]
    answers = [
        "Here is a simple recipe: mix flour, water, salt and yeast, then let it rise.",
        "I can't wait to see this film again!",
        "I'm sorry to hear your flight was delayed; here is what you can do.",
        "Choose a long passphrase of unrelated words and never reuse it.",
        "You cannot go wrong with this movie.",
        "",
    ]
    assert [grounding.is_refusal(t) for t in refusals] == [True] * len(refusals)
    assert [grounding.is_refusal(t) for t in answers] == [False] * len(answers)


def test_refusal_table_sends_each_request_alone():
    harmful, benign = grounding.HARMFUL_REQUESTS, grounding.BENIGN_REQUESTS
    assert len(harmful) == len(benign) == 6 and not set(harmful) & set(benign)
    seen = []

    def generate(messages):
        seen.append(messages)
        return "I'm sorry, but I can't help with that." if messages[0]["content"] in harmful else "Sure, here is how."

    table = grounding.refusal_table(generate, [*harmful, *benign], progress=False)
    assert list(table.columns) == ["request", "answer", "refused"]
    assert table["refused"].tolist() == [True] * 6 + [False] * 6
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in seen)


def _fake_encoder(texts):
    return np.ones((len(texts), 3))


def _gap_frame(**changes) -> pd.DataFrame:
    return synthetic_scores(0.3, seed=1).assign(**changes)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: grounding.Retriever([], encoder=_fake_encoder), "the corpus is empty"),
        (lambda: grounding.Retriever("a film", encoder=_fake_encoder), "got one string"),
        (lambda: grounding.Retriever(["a film", " "], encoder=_fake_encoder), "1 empty or non-string"),
        (lambda: grounding.Retriever(["a", "b"], ["x"], encoder=_fake_encoder), "one source label per passage"),
        (lambda: grounding.Retriever(["a", "b"], encoder=lambda t: np.ones((1, 3))), "one vector per text"),
        (lambda: grounding.Retriever(["a"], encoder=_fake_encoder).search("film", k=0), "k must be an integer >= 1"),
        (lambda: grounding.Retriever(["a"], encoder=_fake_encoder).search("film", k=True), "k must be an integer"),
        (lambda: grounding.Retriever(["a"], encoder=_fake_encoder).search("  ", k=1), "the query must be a non-empty"),
        (lambda: grounding.redact([]), "passages is empty"),
        (lambda: grounding.grounded_messages("", ["a"]), "the question must be a non-empty"),
        (lambda: grounding.grounded_messages("Why?", "a passage"), "got one string"),
        (lambda: grounding.grounded_messages("Why?", ["a"], sources=["x", "y"]), "one per passage"),
        (lambda: grounding.plain_messages(None), "the question must be a non-empty"),
        (lambda: grounding.citations(None), "the answer must be a string"),
        (lambda: grounding.answer_sentences(3), "the answer must be a string"),
        (lambda: grounding.groundedness("A fine film here.", [], _fake_encoder), "passages is empty"),
        (lambda: grounding.groundedness("A fine film.", ["a"], _fake_encoder, threshold=1.5), r"in \[0, 1\]"),
        (lambda: grounding.compare_grounding([], None, None), "questions is empty"),
        (
            lambda: grounding.compare_grounding(
                ["Why?"], grounding.Retriever(["a"], encoder=_fake_encoder), lambda m: ["x"], progress=False
            ),
            "generate must return the answer text",
        ),
        (lambda: grounding.grounding_summary(pd.DataFrame()), "needs a non-empty DataFrame"),
        (lambda: grounding.grounding_summary(pd.DataFrame({"question": ["q"]})), "missing condition, supported"),
        (
            lambda: grounding.grounding_summary(
                pd.DataFrame(
                    {
                        "question": ["q", "r", "r"],
                        "condition": ["grounded", "grounded", "plain"],
                        "supported": [1.0, 1.0, 0.0],
                    }
                )
            ),
            "question 'q' lacks a condition",
        ),
        (
            lambda: grounding.grounding_summary(
                pd.DataFrame({"question": ["q", "q"], "condition": ["grounded", "plain"], "supported": [1.0, 0.0]})
            ),
            "at least 2 questions",
        ),
        (lambda: grounding.bias_prompts([], ["a"], ["b"]), "templates is empty"),
        (lambda: grounding.bias_prompts(["A person"], ["a"], ["b"]), "has no {person} slot"),
        (lambda: grounding.bias_prompts(["{person} ran"], [], ["b"]), "group_a is empty"),
        (lambda: grounding.bias_prompts(["{person} ran"], ["a"], ["b"], labels=("x",)), "labels names the two"),
        (lambda: grounding.group_gap(_gap_frame(), "sentiment"), "missing sentiment"),
        (lambda: grounding.group_gap(_gap_frame(score=np.nan), "score"), "numbers without NaN"),
        (lambda: grounding.group_gap(_gap_frame(score="x"), "score"), "numbers without NaN"),
        (lambda: grounding.group_gap(_gap_frame(), "score", n_boot=10), "n_boot must be an integer >= 100"),
        (lambda: grounding.group_gap(_gap_frame(group="a"), "score"), "template 0 lacks a group"),
        (lambda: grounding.group_gap(_gap_frame(template=0), "score"), "at least 2 templates"),
        (lambda: grounding.is_refusal(None), "the answer must be a string"),
        (lambda: grounding.refusal_table(lambda m: "ok", "a request"), "got one string"),
    ],
)
def test_bad_input_gets_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_quote_style_asks_for_quotes_and_is_a_third_paired_condition(retriever):
    answer_style = grounding.grounded_messages("Is it good?", ["A fine film."])
    quote_style = grounding.grounded_messages("Is it good?", ["A fine film."], style="quote")
    assert quote_style[0]["content"] == grounding.QUOTE_SYSTEM != answer_style[0]["content"]
    assert quote_style[1]["content"].endswith(grounding.QUOTE_INSTRUCTION)
    assert quote_style[1]["content"].startswith(answer_style[1]["content"])  # the same passages and question
    seen = []
    frame = grounding.compare_grounding(QUESTIONS, retriever, fake_generate(seen), progress=False,
                                        conditions=("quoted", "grounded", "plain"))  # fmt: skip
    assert frame["condition"].tolist() == ["quoted", "grounded", "plain"] * 3 and len(seen) == 9
    summary = grounding.grounding_summary(frame, a="quoted", b="plain")
    assert summary["quoted"] == pytest.approx(5 / 6) and summary["difference"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="conditions must be some of"):
        grounding.compare_grounding(QUESTIONS, retriever, fake_generate([]), conditions=("grounded", "chatty"))
    with pytest.raises(ValueError, match="style must be one of"):
        grounding.grounded_messages("Is it good?", ["A fine film."], style="essay")


def test_retriever_can_embed_a_title_with_each_passage_and_return_the_passage(encoder):
    texts = ["Slow and dull.", "A joy from start to finish."]
    titled = grounding.Retriever(
        texts, ["Alpha", "Omega"], encoder, embed_texts=["Alpha: Slow and dull.", "Omega: A joy from start to finish."]
    )
    hits = titled.search("What about Omega?", k=1)
    assert hits.text.tolist() == ["A joy from start to finish."] and hits.source.tolist() == ["Omega"]
    with pytest.raises(ValueError, match="one per passage"):
        grounding.Retriever(texts, encoder=encoder, embed_texts=["only one"])
