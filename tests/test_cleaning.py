"""Chapter 01 data preparation: cleaning steps, PII redaction, the raters' scores and their agreement."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from course_utils import cleaning, data

GROUND_TRUTH_ROWS = {"movie": 10605, "amazon": 3708, "tweets": 4200, "nyt": 5190}


# ---------------------------------------------------------------------------------------------- steps


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\uff46\uff55\uff4c\uff4c width", "full width"),  # full-width letters
        ("\ufb01ne", "fine"),  # ligature
        ("cafe\u0301", "caf\u00e9"),  # combining accent composed
        ("a\u00a0b", "a b"),  # no-break space
        ("x\u00b2 \u2026", "x2 ..."),  # NFKC is lossy: superscripts and ellipses become plain
        ("already plain", "already plain"),
    ],
)
def test_unicode_nfkc(raw: str, expected: str) -> None:
    assert cleaning.unicode_nfkc(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("the new ''Conan'' and", 'the new "Conan" and'),
        ("(''Take Care of My Cat'') is", '("Take Care of My Cat") is'),
        ("don't", "don't"),
        ("the students' essays", "the students' essays"),
        ("Simon Leys' novel ''The Death of Napoleon''", 'Simon Leys\' novel "The Death of Napoleon"'),
        ("the students' ''best'' day", 'the students\' "best" day'),
        ("Calls for North American 'Accord.'''", "Calls for North American 'Accord.'\""),
        ("'''Tis the season,'' he said", '"\'Tis the season," he said'),
        ("for '' cool factor '' buffs", 'for " cool factor " buffs'),
        ("rock 'n' roll", "rock 'n' roll"),
        ("''''", "''''"),  # four apostrophes: no reading is safe, left alone
    ],
)
def test_fix_quote_artefacts(raw: str, expected: str) -> None:
    assert cleaning.fix_quote_artefacts(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Fish &amp; chips", "Fish & chips"),
        ("I &lt;3 you &gt;_&lt;", "I <3 you >_<"),
        ("&quot;wow&quot;", '"wow"'),
        ("it&#39;s", "it's"),
        ("at &amp;#38; t's", "at & t's"),  # double-escaped (amazon)
        ("&amp;amp;", "&"),
        ("AT&T and this&nothing", "AT&T and this&nothing"),  # no ';': not an entity ("&not" would be "¬")
        ("a&nbsp;b", "a\u00a0b"),
    ],
)
def test_unescape_html(raw: str, expected: str) -> None:
    assert cleaning.unescape_html(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  a \t b\r\n\n c  ", "a b c"),
        ("\u3000x\u2028y", "x y"),
        ("", ""),
        ("one", "one"),
    ],
)
def test_collapse_whitespace(raw: str, expected: str) -> None:
    assert cleaning.collapse_whitespace(raw) == expected


def test_steps_are_ordered_and_idempotent() -> None:
    assert list(cleaning.STEPS) == ["unescape_html", "unicode_nfkc", "fix_quote_artefacts", "collapse_whitespace"]
    samples = ["''Conan''  &amp;amp; \uff46\ufb01", "it&#39;s  ''ok''", "\u00a0 plain "]
    for text in samples:
        once = text
        for step in cleaning.STEPS.values():
            once = step(once)
        again = once
        for step in cleaning.STEPS.values():
            again = step(again)
        assert again == once


@pytest.mark.parametrize(
    "text, garbage", [("", True), (":-)", True), ("a !", True), ("42", True), ("ok", False), ("\u00e9t\u00e9", False)]
)
def test_is_garbage(text: str, garbage: bool) -> None:
    assert cleaning.is_garbage(text) is garbage


def test_clean_frame_reports_every_change_and_drop() -> None:
    frame = pd.DataFrame(
        {
            "id": list(range(8)),
            "text": [
                "''Conan''  is back",
                "Fish &amp; chips",
                "\uff46\uff55\uff4c\uff4c width",
                "  :-)  ",
                "&amp;",
                "fine as is",
                "a .",
                None,
            ],
        }
    )
    cleaned, report = cleaning.clean_frame(frame)
    assert list(cleaned["text"]) == ['"Conan" is back', "Fish & chips", "full width", "fine as is"]
    assert list(cleaned["id"]) == [0, 1, 2, 5]
    assert list(report.columns) == ["step", "rows"]
    assert dict(zip(report["step"], report["rows"], strict=True)) == {
        "unescape_html": 2,
        "unicode_nfkc": 1,
        "fix_quote_artefacts": 1,
        "collapse_whitespace": 2,
        cleaning.DROP_STEP: 4,
    }
    assert len(frame) - len(cleaned) == report["rows"].iloc[-1]
    assert list(frame["text"])[0] == "''Conan''  is back"  # the input is not modified


def test_clean_frame_with_chosen_steps_and_errors() -> None:
    frame = pd.DataFrame({"text": ["''a''  b", "x"]})
    cleaned, report = cleaning.clean_frame(frame, steps=["collapse_whitespace"])
    assert list(cleaned["text"]) == ["''a'' b"] and list(report["rows"]) == [1, 1]
    cleaned, report = cleaning.clean_frame(frame, steps={"upper": str.upper})
    assert list(cleaned["text"]) == ["''A''  B"] and list(report["step"]) == ["upper", cleaning.DROP_STEP]
    with pytest.raises(ValueError, match="choose from"):
        cleaning.clean_frame(frame, steps=["lowercase"])
    with pytest.raises(ValueError, match="list of step names"):
        cleaning.clean_frame(frame, steps="collapse_whitespace")
    with pytest.raises(ValueError, match="needs columns"):
        cleaning.clean_frame(pd.DataFrame({"sentence": ["x"]}))


# ---------------------------------------------------------------------------------------------- PII

NONE = {"URL": 0, "EMAIL": 0, "USER": 0, "PHONE": 0}
PII_CASES = [
    ("@anonymous thanks!", "[USER] thanks!", {"USER": 1}),
    ("RT @anonymous: great day", "RT [USER]: great day", {"USER": 1}),
    ("(cc @Jane_Doe99)", "(cc [USER])", {"USER": 1}),
    ("thx @anonymous's mom.", "thx [USER]'s mom.", {"USER": 1}),
    (".@a_b, @c!", ".[USER], [USER]!", {"USER": 2}),
    ("meet me @ the park @", "meet me @ the park @", {}),  # a lone @ is not a handle
    ("mail karleem@anonymous now", "mail [EMAIL] now", {"EMAIL": 1}),  # the corpus's anonymised addresses
    ("Ouch. RT@anonymous Instagram", "Ouch. RT[USER] Instagram", {"USER": 1}),  # retweet glued to the handle
    ("ART@home", "[EMAIL]", {"EMAIL": 1}),
    (".@anonymous is off to a nice 5-1 start", ".[USER] is off to a nice 5-1 start", {"USER": 1}),  # not an e-mail
    ("an artist's eye.@anonymous", "an artist's eye.[USER]", {"USER": 1}),  # a local part never ends with "."
    ("mail jane.doe+news@example.co.uk.", "mail [EMAIL].", {"EMAIL": 1}),
    ("write to info@shop.com or @shop", "write to [EMAIL] or [USER]", {"EMAIL": 1, "USER": 1}),
    ("see http://url_removed.", "see [URL].", {"URL": 1}),
    ("link: https://example.com/a?b=1&c=2, wow", "link: [URL], wow", {"URL": 1}),
    ("go to www.example.org!", "go to [URL]!", {"URL": 1}),
    ("(details at HTTP://t.co/x1)", "(details at [URL])", {"URL": 1}),
    ("http://user@example.com/x", "[URL]", {"URL": 1}),  # URLs first: no e-mail or handle inside
    ("call +44 20 7946 0958 now", "call [PHONE] now", {"PHONE": 1}),
    ("call (555) 123-4567.", "call [PHONE].", {"PHONE": 1}),
    ("555-123-4567 or 555.123.4567", "[PHONE] or [PHONE]", {"PHONE": 2}),
    ("call me 423 521 0367", "call me [PHONE]", {"PHONE": 1}),
    ("toll free 1-800-555-1234, or +1 (555) 123-4567", "toll free [PHONE], or [PHONE]", {"PHONE": 2}),
    ("In 2014 we won 3-2 at 10:30 for $19.99 +1 RT", "In 2014 we won 3-2 at 10:30 for $19.99 +1 RT", {}),
    (
        "v2.0.1 on 2014-10-30, ISBN 978-3-16-148410-0, 555-1234",
        "v2.0.1 on 2014-10-30, ISBN 978-3-16-148410-0, 555-1234",
        {},
    ),
    (
        "@anonymous call 555-123-4567 or mail a.b@c.org, see http://x.co/y.",
        "[USER] call [PHONE] or mail [EMAIL], see [URL].",
        {"USER": 1, "PHONE": 1, "EMAIL": 1, "URL": 1},
    ),
]


@pytest.mark.parametrize("text, expected, counts", PII_CASES)
def test_redact_pii(text: str, expected: str, counts: dict) -> None:
    redacted, found = cleaning.redact_pii(text)
    assert redacted == expected
    assert found == {**NONE, **counts}


def test_redact_frame_counts_kinds_and_rows() -> None:
    frame = pd.DataFrame({"id": ["1", "2", "3"], "text": ["@a @b http://x.co", "call 555-123-4567", "nothing"]})
    redacted, table = cleaning.redact_frame(frame)
    assert list(redacted["text"]) == ["[USER] [USER] [URL]", "call [PHONE]", "nothing"]
    assert list(redacted["id"]) == ["1", "2", "3"] and frame["text"].iloc[0] == "@a @b http://x.co"
    rows = {r["kind"]: (r["replacements"], r["rows affected"]) for r in table.to_dict("records")}
    assert rows == {"URL": (1, 1), "EMAIL": (0, 0), "USER": (2, 1), "PHONE": (1, 1)}
    with pytest.raises(ValueError, match="needs a string"):
        cleaning.redact_frame(pd.DataFrame({"text": ["x", None]}))


# ---------------------------------------------------------------------------------------------- ratings


@pytest.fixture(scope="module")
def ratings() -> dict[str, pd.DataFrame]:
    """The raters' scores of all four domains."""
    return {domain: cleaning.load_ratings(domain) for domain in data.DOMAINS}


@pytest.fixture(scope="module")
def ground_truth() -> dict[str, pd.DataFrame]:
    """The four domains with neutral sentences kept, as in the GroundTruth files."""
    return {domain: data.load_domain(domain, keep_neutral=True) for domain in data.DOMAINS}


def test_load_ratings_matches_ground_truth(ratings, ground_truth) -> None:
    for domain, frame in ratings.items():
        assert list(frame.columns) == ["id", "mean", "std", "scores", "n_raters"]
        assert len(frame) == GROUND_TRUTH_ROWS[domain]
        assert set(frame["id"]) == set(ground_truth[domain]["id"]), domain  # amazon lists them in another order
        first = frame["scores"].iloc[0]
        assert isinstance(first, list) and all(type(s) is int for s in first)
        assert (frame["n_raters"] == frame["scores"].map(len)).all()


def test_rater_counts_per_domain(ratings) -> None:
    # The paper and the README say "at least 20 raters"; that holds for amazon, nyt and tweets, not movie.
    n = {domain: frame["n_raters"] for domain, frame in ratings.items()}
    assert (n["amazon"] == 20).all() and (n["nyt"] == 20).all()
    assert (n["tweets"].min(), n["tweets"].max(), int((n["tweets"] > 20).sum())) == (20, 99, 1000)
    assert (n["movie"].min(), n["movie"].max()) == (15, 29)
    assert int((n["movie"] < 20).sum()) == 7275


def test_rating_means_agree_with_ground_truth(ratings, ground_truth) -> None:
    for domain, frame in ratings.items():
        merged = frame.merge(ground_truth[domain][["id", "rating"]], on="id")
        differs = (merged["mean"] - merged["rating"]).abs() > 1e-6
        assert (np.sign(merged["mean"]) == np.sign(merged["rating"])).all(), domain
        if domain == "tweets":  # 199 tweets rated by ~95 people have another mean in the GroundTruth file
            assert int(differs.sum()) == 199 and (merged.loc[differs, "n_raters"] > 20).all()
        else:
            assert not differs.any(), domain


def _write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "x_anonDataRatings.txt"
    path.write_bytes(content)
    return path


def test_read_ratings_handles_bom_and_crlf(tmp_path: Path) -> None:
    content = b"\xef\xbb\xbf1_1\t-0.5\t0.5\t[-1, 0]\r\n2\t1\t0\t[1,1]\r\n\r\n"  # BOM as in amazon's file
    frame = cleaning.read_ratings(_write(tmp_path, content))
    assert list(frame["id"]) == ["1_1", "2"] and list(frame["scores"]) == [[-1, 0], [1, 1]]
    assert list(frame["n_raters"]) == [2, 2]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"1\t0.5\t0.5\t[1, 0]\r\n2\t0.5\t[1, 0]\r\n", "line 2: expected 4 tab-separated fields"),
        (b"1\tabc\t0.5\t[1]\n", "line 1: mean 'abc'"),
        (b"1\t1\t0\t[1, 1]\n2\t1\t0\t[1, x]\n", "line 2: scores .* not an integer"),
        (b"1\t1\t0\t1, 1\n", "line 1: scores .* not a non-empty"),
        (b"1\t1\t0\t[]\n", "line 1: scores .* not a non-empty"),
        (b"1\t5\t0\t[5, 5]\n", "line 1: a score .* outside the -4..4 scale"),
        (b"1\t2\t0\t[1, 1]\n", "line 1: mean 2.0 differs from the mean of its 2 scores"),
        (b"1\t1\t0\t[1]\n1\t1\t0\t[1]\n", "id '1' appears more than once"),
        (b"\r\n", "no ratings"),
    ],
)
def test_read_ratings_errors_name_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cleaning.read_ratings(_write(tmp_path, content))


def test_load_ratings_unknown_domain_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        cleaning.load_ratings("imdb")


# ---------------------------------------------------------------------------------------------- agreement


def naive_alpha(units: list[list[float]]) -> float:
    """Krippendorff's interval alpha straight from the definition, with explicit pair loops."""
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    within = sum(sum((a - b) ** 2 for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in units)
    across = sum((a - b) ** 2 for a, b in itertools.permutations(values, 2))
    return 1 - (within / n) / (across / (n * (n - 1)))


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, missing values;
# the paper gives alpha = 0.849 for interval data (0.743 nominal). Unit 12 has one value and is skipped.
KRIPPENDORFF_2011 = [
    [1, 1, 1],
    [2, 2, 3, 2],
    [3, 3, 3, 3],
    [3, 3, 3, 3],
    [2, 2, 2, 2],
    [1, 2, 3, 4],
    [4, 4, 4, 4],
    [1, 1, 2, 1],
    [2, 2, 2, 2],
    [5, 5, 5],
    [1, 1],
    [3],
]


def test_sign_agreement_hand_examples() -> None:
    assert cleaning.sign_agreement([[1, 2], [-1, -3], [0, 0]]) == 1.0
    assert cleaning.sign_agreement([[1, 1, -1, 0]]) == 0.5
    assert cleaning.sign_agreement([[1, -1]]) == 0.5  # a tie: the share is the same whichever side wins
    assert cleaning.sign_agreement([[2, 3, -1], [0, 0, 0, 4]]) == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert cleaning.sign_agreement([[1, math.nan, 1], []]) == 1.0  # NaN is missing, empty units are skipped
    assert cleaning.sign_counts([[-2, 0, 3, 4], [-1]]).tolist() == [[1, 1, 2], [1, 0, 0]]


def test_agreement_input_errors() -> None:
    with pytest.raises(ValueError, match="empty collection"):
        cleaning.sign_agreement([])
    with pytest.raises(ValueError, match="only empty lists"):
        cleaning.sign_agreement([[], []])
    with pytest.raises(ValueError, match="one list per sentence"):
        cleaning.krippendorff_alpha_interval([1, 2, 3])
    with pytest.raises(ValueError, match="must be numbers"):
        cleaning.krippendorff_alpha_interval([["a", "b"]])
    with pytest.raises(ValueError, match="2 or more ratings"):
        cleaning.krippendorff_alpha_interval([[1], [2]])
    with pytest.raises(ValueError, match="alpha is undefined"):
        cleaning.krippendorff_alpha_interval([[2, 2], [2, 2, 2], [5]])


def test_alpha_perfect_agreement_is_one() -> None:
    assert cleaning.krippendorff_alpha_interval([[1, 1], [3, 3, 3], [-2, -2], [4]]) == pytest.approx(1.0)


def test_alpha_hand_computed() -> None:
    # values 1,2 | 3,3 | 2,4: n = 6, D_o = (2 + 0 + 8) / 6 = 5/3, D_e = 2 (6*43 - 15^2) / 30 = 11/5,
    # alpha = 1 - (5/3) / (11/5) = 8/33; a unit with one rating changes nothing.
    assert cleaning.krippendorff_alpha_interval([[1, 2], [3, 3], [2, 4]]) == pytest.approx(8 / 33)
    assert cleaning.krippendorff_alpha_interval([[1, 2], [3, 3], [2, 4], [9]]) == pytest.approx(8 / 33)
    assert naive_alpha([[1, 2], [3, 3], [2, 4]]) == pytest.approx(8 / 33)


def test_alpha_published_example_and_invariance() -> None:
    alpha = cleaning.krippendorff_alpha_interval(KRIPPENDORFF_2011)
    assert alpha == pytest.approx(0.849, abs=5e-4)
    assert alpha == pytest.approx(naive_alpha(KRIPPENDORFF_2011))
    shifted = [[2 * v + 3 for v in unit] for unit in KRIPPENDORFF_2011]
    assert cleaning.krippendorff_alpha_interval(shifted) == pytest.approx(alpha)


def _random_units(seed: int = 0, n_units: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(-4, 5, size=rng.integers(1, 7)) // rng.integers(1, 3)) for _ in range(n_units)]


def test_alpha_matches_the_definition_on_random_data() -> None:
    for seed in range(3):
        units = _random_units(seed)
        assert cleaning.krippendorff_alpha_interval(units) == pytest.approx(naive_alpha(units))


def test_alpha_matches_the_krippendorff_package() -> None:
    krippendorff = pytest.importorskip("krippendorff")
    for units in (KRIPPENDORFF_2011, _random_units(7)):
        width = max(len(u) for u in units)
        matrix = np.full((width, len(units)), np.nan)  # raters x units, NaN = missing
        for j, unit in enumerate(units):
            matrix[: len(unit), j] = unit
        expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval")
        assert cleaning.krippendorff_alpha_interval(units) == pytest.approx(expected)


def test_label_disagreement_hand_example() -> None:
    frame = pd.DataFrame({"id": list("abcde"), "text": list("ABCDE"), "label": [1, 1, 0, 1, 0]})
    ratings = pd.DataFrame(
        {"id": list("edcba"), "scores": [[-1, -1, 0], [1, 1, 0, 0], [-4, 1, 1], [2, 2, 0, 0, 0], [1, 1, 1]]}
    )
    out = cleaning.label_disagreement(frame, ratings)
    assert list(out["id"]) == ["b", "c", "d"]
    assert list(out["majority"]) == ["neutral", "positive", "tie"]
    assert list(out.columns) == [
        "id",
        "text",
        "label",
        "n_raters",
        "share_negative",
        "share_neutral",
        "share_positive",
        "majority",
    ]
    assert out.loc[0, ["share_negative", "share_neutral", "share_positive"]].tolist() == [0.0, 0.6, 0.4]
    with pytest.raises(ValueError, match="have no ratings"):
        cleaning.label_disagreement(frame, ratings.iloc[1:])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        cleaning.label_disagreement(frame.assign(label=[1, 0, np.nan, 1, 0]), ratings)


# ---------------------------------------------------------------------------------------------- real data


def test_real_data_agreement_figures(ratings, movie) -> None:
    """Rater agreement on the real files (run with -rP to see the printed figures)."""
    expected = {
        "movie": (0.9038, 0.7983),
        "amazon": (0.8715, 0.8204),
        "tweets": (0.8246, 0.7835),
        "nyt": (0.7086, 0.5323),
    }
    for domain, frame in ratings.items():
        agreement = cleaning.sign_agreement(frame["scores"])
        alpha = cleaning.krippendorff_alpha_interval(frame["scores"])
        print(f"{domain:7s} sign agreement {agreement:.4f}  Krippendorff alpha (interval) {alpha:.4f}")
        assert (agreement, alpha) == pytest.approx(expected[domain], abs=1e-4)
    disagree = cleaning.label_disagreement(movie, ratings["movie"])
    majority = disagree["majority"].value_counts().to_dict()
    print(f"movie: {len(disagree)} of {len(movie)} labels are not their raters' majority sign; {majority}")
    assert len(disagree) == 176 and majority == {"neutral": 123, "tie": 36, "positive": 9, "negative": 8}


def test_real_data_cleaning_and_pii_figures() -> None:
    """Rows each cleaning step changes per domain, and the PII found in the tweets."""
    changed = {
        "movie": [22, 2, 273, 620, 0],
        "amazon": [44, 0, 1, 212, 5],
        "tweets": [162, 0, 0, 369, 0],
        "nyt": [8, 0, 541, 9, 0],
    }
    for domain in data.DOMAINS:
        cleaned, report = cleaning.clean_frame(data.load_domain(domain))
        print(domain, dict(zip(report["step"], report["rows"], strict=True)))
        assert list(report["rows"]) == changed[domain]
        assert not cleaned["text"].str.contains("''", regex=False).any()
    redacted, table = cleaning.redact_frame(data.load_domain("tweets"))
    print(table.to_string(index=False))
    rows = {r["kind"]: (r["replacements"], r["rows affected"]) for r in table.to_dict("records")}
    assert rows == {"URL": (697, 677), "EMAIL": (2, 2), "USER": (2678, 2208), "PHONE": (2, 2)}
    assert not redacted["text"].str.contains(r"@\w", regex=True).any()
