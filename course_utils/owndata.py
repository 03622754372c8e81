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
}
NOT_YET = "its asserted bands are calibrated on the movie data and its own-data path is not built yet"
MOVIE_ONLY = {
    "02_differential_privacy": "it builds DP-SGD and its accountant step by step on the course's data; part 2 "
    "(02_private_fine_tuning) trains privately and audits on your file",
    "04_compression": "its pruning, quantization and ONNX export run at the movie recipe's 64-token inputs and "
    "its bands are the movie model's; threading your max_length through them is " + "not built yet",
    "04_distillation": "its students' recipes were tuned on the movie data; " + NOT_YET,
    "04_peft": "its LoRA and adapter runs are compared with the movie recipe; " + NOT_YET,
    "05_explainability": "its explanations are checked against a sentiment word list (positive and negative words) "
    "that your labels need not share",
    "06_domain_shift": "its domains are the corpus's four sentiment sets (movies, products, editorials, tweets)",
    "06_robustness": "its attacks and checks use sentiment words and negation, which assume sentiment labels",
    "07_deployment": "it serves chapter 04's exported movie model, whose model card describes that data; " + NOT_YET,
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
    return course_splits(own=own)


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
