"""Which chapters run on your own data (COURSE_DATA), and why the others keep the course's movie data.

Every notebook takes its splits from `chapter_splits("NN_name")`, which prints one sentence saying which data the
chapter uses and, when you set COURSE_DATA and the chapter keeps the movie data, why. A chapter moves from
MOVIE_ONLY to YOUR_DATA once its asserted figures are guarded to the movie data and its own-data path is tested.
"""

from __future__ import annotations

import pandas as pd

from . import config
from .data import Splits, course_splits

YOUR_DATA = {
    "00_finetuning": "the recipe adapts to your data (max_length, epochs, class weights) and the result is diagnosed",
    "01_data_preparation": "sections 1-9 use the course's four rated domains (the raters' agreement needs their "
    "ratings); section 10 runs cleaning, PII, duplicates and label issues on your file",
    "02_private_fine_tuning": "private training, the audit and the canaries run on your file; the findings asserted "
    "on the movie data are measured on yours and listed at the end",
    "03_federated_learning": "sections 1-10 use the course's clients (movies, domains, label-skewed shards); section "
    "11 federates your file, one client per value of its `group` column",
    "04_compression": "pruning, quantization and ONNX export of chapter 00's model of your file, at its max_length; "
    "the exported files and the table go to a folder of their own (chapter 07 serves the movie model's), and the "
    "findings asserted on the movie data are measured on yours and listed at the end",
    "04_peft": "LoRA, AdaLoRA, prompt tuning and (IA)3 trained on your file with chapter 00's adapted recipe and "
    "compared with its full fine-tuning; the findings asserted on the movie data are listed at the end",
    "05_explainability": "attention, Integrated Gradients, LIME, SHAP and their faithfulness on your test texts (the "
    "openings of long ones); the sentiment edits, activation patching and the VADER lexicon run only when your "
    "labels are negative and positive",
    "06_robustness": "the typo and word-swap attacks (on the first 40 words of each test text), PGD, adversarial "
    "training, the corrector and the noise curve on chapter 00's model of your file; the lexicon check of section 4 "
    "runs only when your labels are negative and positive",
    "07_deployment": "chapter 00's model of your file exported, checked and served at its max_length (texts cut to the "
    "service's character limit), load-tested and fault-tested; its model card names your file and asks you to "
    "describe its use",
}
NOT_YET = "its asserted bands are calibrated on the movie data and its own-data path is not built yet"
MOVIE_ONLY = {
    "02_differential_privacy": "it builds DP-SGD and its accountant step by step on the course's data; part 2 "
    "(02_private_fine_tuning) trains privately and audits on your file",
    "04_distillation": "its students' recipes were tuned on the movie data and its unlabelled text is the corpus's "
    "other domains; " + NOT_YET,
    "06_domain_shift": "its domains are the corpus's four sentiment sets (movies, products, editorials, tweets); a "
    "`domain` column in your file is kept but not used here yet",
    "08_generative_llm": "it studies a generative model on the course's sentences, with canaries it inserts itself",
    "08_grounded_answers": "its retrieval passages and questions are about the movie corpus",
}


def supports_own_data(chapter: str) -> bool:
    """Whether a chapter runs on COURSE_DATA (True) or keeps the movie data (False); unknown names are refused."""
    if chapter not in YOUR_DATA and chapter not in MOVIE_ONLY:
        known = sorted({*YOUR_DATA, *MOVIE_ONLY})
        raise ValueError(f"unknown chapter {chapter!r}; use the notebook's name without .ipynb, one of {known}")
    return chapter in YOUR_DATA


def announce(chapter: str) -> bool:
    """Print which data the chapter uses (and, when it keeps the movie data despite COURSE_DATA, why); return
    whether it runs on your file."""
    own = supports_own_data(chapter)
    custom = config.data_file()
    if custom is None:
        print("data: the course's (set COURSE_DATA=your.csv to bring your own; see chapter 00)")
    elif own:
        print(f"data: your file {custom}: {YOUR_DATA[chapter]}")
    else:
        print(f"data: the course's movie sentences, not your file {custom.name}: {MOVIE_ONLY[chapter]}")
    return own and custom is not None


def chapter_splits(chapter: str, verbose: bool = True) -> Splits:
    """The splits a chapter runs on: your file's where the chapter supports it, else the course's, saying why."""
    own = announce(chapter) if verbose else supports_own_data(chapter)
    splits = course_splits(own=own)
    if verbose and splits.split_by == "groups":
        groups = {name: set(getattr(splits, name)["group"].dropna()) for name in ("train", "validation", "test")}
        print(
            f"split by your group column: {len(set().union(*groups.values()))} groups, each in one split only "
            f"(train {len(groups['train'])}, validation {len(groups['validation'])}, test {len(groups['test'])})"
        )
    return splits


class Claims:
    """A chapter's findings: asserted on the course's data (where their bands were measured), measured and
    reported on yours, where they may or may not hold."""

    def __init__(self, course_data: bool):
        self.course_data = course_data
        self.rows: list[tuple[str, bool]] = []

    def __call__(self, holds: bool, claim: str) -> None:
        """Record whether `claim` holds; on the course's data a claim that fails stops the notebook."""
        if self.course_data:
            assert holds, claim
        self.rows.append((claim, bool(holds)))

    def table(self) -> pd.DataFrame:
        """One row per claim: whether it held on this run's data."""
        return pd.DataFrame(self.rows, columns=["claim (measured on the movie data)", "holds here"])
