"""Which chapters run on your own data (COURSE_DATA), and why the others keep the course's movie data.

Every notebook takes its splits from `chapter_splits("NN_name")`, which prints one sentence saying which data the
chapter uses and, when you set COURSE_DATA and the chapter keeps the movie data, why. A chapter moves from
MOVIE_ONLY to YOUR_DATA once its asserted figures are guarded to the movie data and its own-data path is tested.
"""

from __future__ import annotations

from . import config
from .data import Splits, course_splits

YOUR_DATA = {
    "00_finetuning": "the recipe adapts to your data (max_length, epochs, class weights) and the result is diagnosed",
}
NOT_YET = "its figures and asserted bands are calibrated on the movie data and its own-data path is not built yet"
MOVIE_ONLY = {
    "01_data_preparation": "its label-noise sections use the 15 to 29 human ratings behind every movie sentence, "
    "which a labelled file does not have; chapter 00's data-health report checks your file for duplicates, "
    "conflicting labels, lengths, encoding damage and language",
    "02_differential_privacy": NOT_YET,
    "02_private_fine_tuning": NOT_YET,
    "03_federated_learning": "its clients are the corpus's four sentiment domains and label-skewed movie shards; "
    "partitions from a `group` column of your file are " + "not built yet",
    "04_compression": NOT_YET,
    "04_distillation": NOT_YET,
    "04_peft": NOT_YET,
    "05_explainability": "its explanations are checked against a sentiment word list (positive and negative words) "
    "that your labels need not share",
    "06_domain_shift": "its domains are the corpus's four sentiment sets (movies, products, editorials, tweets)",
    "06_robustness": "its attacks and checks use sentiment words and negation, which assume sentiment labels",
    "07_deployment": NOT_YET,
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
