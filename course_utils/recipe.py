"""A fine-tuning recipe that adapts to the data, and a diagnosis when the model does not beat its baselines.

The movie data keeps the recipe chosen on its validation split (`modeling.default_config`). Any other data gets
rules, each printed with its reason: a maximum length that keeps about 95% of the training texts whole (capped
by the model's limit and, on a CPU, by a budget of tokens to compute), class weights when the classes are
imbalanced, and epochs from the number of optimizer steps an epoch gives. After training, `diagnose` compares the
model with the majority class and TF-IDF and names what it measured when the model falls short.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from . import assets, config
from .data import Splits, course_splits, subsample
from .evaluation import EvalResult
from .modeling import TrainConfig, default_config, load_tokenizer, token_lengths

MOVIE_SOURCES = ("movie", assets.ONLINE_DATASET_ID)  # the data the default recipe was tuned on
COVERAGE = 0.95  # share of training texts max_length should keep whole
LENGTH_STEP = 32  # max_length is rounded up to a multiple of this
MIN_LENGTH = 32
CPU_LENGTH_CAP = {True: 128, False: 256}  # fast, full: attention and memory grow with the length
CPU_TOKEN_BUDGET = {True: 200_000, False: 3_000_000}  # tokens per run on a CPU: ~2 and ~35 min at 1,450 tokens/s
TARGET_STEPS = {True: 100, False: 600}  # optimizer steps to aim for
MAX_EPOCHS = {True: 4, False: 8}
IMBALANCE = 1.5  # largest / smallest class above this: weight the classes
OWN_LR = 1e-4  # the movie data's validated full-mode rate, used for other data in both modes
FEW_PER_CLASS = 100  # fewer training examples per class than this: the likely cause when the model loses
TRUNCATION_WARN = 0.10  # more of the training texts cut than this: the likely cause


@dataclass(frozen=True)
class RecipeChoice:
    """A training configuration and, per setting, the value chosen and why."""

    config: TrainConfig
    reasons: list[tuple[str, object, str]] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per adapted setting: value and reason."""
        return pd.DataFrame(self.reasons, columns=["setting", "value", "why"]).set_index("setting")


def balanced_weights(labels: np.ndarray, n_classes: int) -> tuple[float, ...]:
    """Per-class weights n / (C * count): scikit-learn's 'balanced' rule (each class contributes equally)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"class {int(np.argmin(counts))} has no training example; every class needs some")
    return tuple(float(w) for w in len(labels) / (n_classes * counts))


def length_for(lengths: np.ndarray, coverage: float = COVERAGE, limit: int = 512) -> int:
    """The smallest multiple of LENGTH_STEP that keeps `coverage` of the lengths whole, within [MIN_LENGTH, limit]."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    wanted = float(np.quantile(np.asarray(lengths), coverage))
    return int(min(limit, max(MIN_LENGTH, LENGTH_STEP * math.ceil(wanted / LENGTH_STEP))))


def run_tokens(lengths: np.ndarray, max_length: int, epochs: int) -> int:
    """Tokens a run computes: every training text, truncated at max_length, once per epoch (padding aside)."""
    return int(np.minimum(lengths, max_length).sum()) * epochs


def adapt_recipe(
    splits: Splits,
    fast: bool | None = None,
    max_length: int | None = None,
    tokenizer=None,
    gpu: bool | None = None,
) -> RecipeChoice:
    """The chapter-00 recipe for these splits: the tuned one for the movie data, else adapted with reasons.

    `max_length` overrides the chosen length (still capped by the model's limit); `gpu` defaults to whether
    `config.device()` is a CUDA device (no CPU budget there).
    """
    fast = config.is_fast() if fast is None else fast
    base = default_config(fast)
    if splits.source in MOVIE_SOURCES:
        if max_length is not None:
            base = replace(base, max_length=max_length)
        why = "tuned on the movie data's validation split (python -m course_harness.recipe_search)"
        return RecipeChoice(base, [("recipe", "course default", why)])
    if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
        raise ValueError(f"max_length must be an integer of at least 8 tokens, got {max_length!r}")
    tokenizer = tokenizer or load_tokenizer()
    limit = int(tokenizer.model_max_length) if tokenizer.model_max_length < 100_000 else 512
    gpu = config.device().type == "cuda" if gpu is None else gpu
    train = subsample(splits.train, base.train_size, seed=base.seed)
    lengths = np.array(token_lengths(tokenizer, train["text"].tolist()))
    reasons: list[tuple[str, object, str]] = []

    cover = length_for(lengths, COVERAGE, limit)
    if max_length is not None:
        length = min(max_length, limit)
        why = f"your choice (capped at the model's {limit})" if max_length > limit else "your choice"
    elif not gpu and cover > CPU_LENGTH_CAP[fast]:
        length = CPU_LENGTH_CAP[fast]
        need = int(np.ceil(np.quantile(lengths, COVERAGE)))
        fits = f"need {need} tokens, beyond the model's {limit}" if need > limit else f"fit in {cover} tokens"
        why = (
            f"{COVERAGE:.0%} of training texts {fits}; capped at {length} on a CPU "
            f"({'fast' if fast else 'full'} mode); pass max_length= or use a GPU to keep more"
        )
    else:
        length = cover
        kept = float((lengths <= length).mean())
        why = f"keeps {kept:.0%} of the training texts whole (median {np.median(lengths):.0f} tokens)"
    reasons.append(("max_length", length, why))

    steps_per_epoch = -(-len(train) // base.batch_size)
    epochs = int(min(MAX_EPOCHS[fast], max(2, math.ceil(TARGET_STEPS[fast] / steps_per_epoch))))
    why = f"{steps_per_epoch} steps per epoch on {len(train):,} texts; aiming at about {TARGET_STEPS[fast]} steps"
    if not gpu:
        budget = CPU_TOKEN_BUDGET[fast]
        while epochs > 2 and run_tokens(lengths, length, epochs) > budget:
            epochs -= 1
        if run_tokens(lengths, length, epochs) > budget:
            why += f"; over the CPU budget of {budget:,} tokens even at 2 epochs (expect a long run)"
        else:
            why += f"; within the CPU budget of {budget:,} tokens"
    reasons.append(("epochs", epochs, why))
    reasons.append(("lr", OWN_LR, "the movie data's validated full-mode rate; 5e-5 over few steps can leave one class"))

    counts = np.bincount(train["label"].to_numpy(), minlength=len(splits.label_names))
    ratio = counts.max() / max(counts.min(), 1)
    weights = None
    if ratio > IMBALANCE:
        weights = balanced_weights(train["label"].to_numpy(), len(splits.label_names))
        shown = ", ".join(f"{n} {w:.2f}" for n, w in zip(splits.label_names, weights, strict=True))
        why = f"largest class {ratio:.1f}x the smallest: losses weighted ({shown}); best epoch by macro F1"
        reasons.append(("class_weights", "balanced", why))
    else:
        reasons.append(("class_weights", "none", f"classes within {IMBALANCE}x of each other"))
    cfg = replace(base, max_length=length, epochs=epochs, lr=OWN_LR, class_weights=weights)
    return RecipeChoice(cfg, reasons)


def course_recipe(splits: Splits | None = None, fast: bool | None = None) -> TrainConfig:
    """The configuration chapter 00 trains the course model with, for these splits (default: the course's)."""
    return adapt_recipe(splits or course_splits(), fast).config


@dataclass(frozen=True)
class Diagnosis:
    """How a fine-tuned model compares with its baselines, what was measured, and what to try."""

    verdict: str  # "beats TF-IDF", "beats TF-IDF ...", "ties TF-IDF ...", "predicts ... for every test example", ...
    ok: bool
    findings: list[str]
    remedies: list[str]

    def text(self) -> str:
        """The diagnosis in plain words, one line per finding and remedy."""
        lines = [f"Verdict: {self.verdict}."]
        lines += [f"  measured: {f}" for f in self.findings]
        lines += [f"  try: {r}" for r in self.remedies]
        return "\n".join(lines)


def paired_se(model: EvalResult, other: EvalResult) -> float:
    """Standard error of the accuracy difference of two models scored on the same test examples."""
    diff = (model.preds == model.labels).astype(float) - (other.preds == other.labels).astype(float)
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def diagnose(
    result: EvalResult,
    tfidf: EvalResult,
    majority: float,
    train: pd.DataFrame,
    cfg: TrainConfig,
    history: list[dict],
    label_names: list[str],
    tokenizer=None,
    probe: EvalResult | None = None,
    warn: bool = True,
) -> Diagnosis:
    """Compare the model with the majority class and TF-IDF + LR on one test split; name the likely causes.

    `probe`, the linear probe on frozen features scored on the same split, is reported when it beats the model.

    Warns (UserWarning) when the model predicts one class for everything or does no better than the majority.
    """
    if len(result.preds) != len(tfidf.preds) or not np.array_equal(result.labels, tfidf.labels):
        raise ValueError("the model and TF-IDF must be scored on the same test split, in the same order")
    n = len(result.labels)
    predicted = np.unique(result.preds)
    se_majority = math.sqrt(max(majority * (1 - majority), 1e-12) / n)
    margin, se = result.accuracy - tfidf.accuracy, paired_se(result, tfidf)
    findings = [
        f"accuracy {result.accuracy:.3f} (macro F1 {result.f1:.3f}); TF-IDF {tfidf.accuracy:.3f}; majority class "
        f"{majority:.3f}; difference to TF-IDF {margin:+.3f} ± {se:.3f} (one standard error, {n} test examples)"
    ]
    if len(predicted) == 1:
        verdict, ok = f"predicts '{label_names[int(predicted[0])]}' for every test example", False
    elif result.accuracy <= majority + se_majority:
        verdict, ok = "does no better than always predicting the majority class", False
    elif margin > se:
        verdict, ok = "beats TF-IDF by more than one standard error", True
    elif margin >= -se:
        verdict, ok = "ties TF-IDF (within one standard error)", False
    else:
        verdict, ok = "loses to TF-IDF by more than one standard error", False
    remedies: list[str] = []
    if probe is not None and probe.accuracy - result.accuracy > paired_se(result, probe):
        findings.append(
            f"the linear probe on frozen MiniLM features scores {probe.accuracy:.3f}, above the fine-tuned model"
        )
        remedies.append("with few labels, keep the encoder frozen (the probe) or fine-tune fewer steps at a lower rate")
    if not ok:
        _causes(train, cfg, history, label_names, tokenizer, findings, remedies)
    if warn and (len(predicted) == 1 or result.accuracy <= majority + se_majority):
        warnings.warn(f"the fine-tuned model {verdict}; read the diagnosis", UserWarning, stacklevel=2)
    return Diagnosis(verdict, ok, findings, remedies)


def _causes(train, cfg, history, label_names, tokenizer, findings: list[str], remedies: list[str]) -> None:
    """Measure the usual causes of a weak fine-tune and append what was found and what to try."""
    tokenizer = tokenizer or load_tokenizer()
    lengths = np.array(token_lengths(tokenizer, train["text"].tolist()))
    cut = float((lengths > cfg.max_length).mean())
    if cut > TRUNCATION_WARN:
        findings.append(f"{cut:.0%} of the training texts are cut at max_length={cfg.max_length} tokens")
        remedies.append("a longer max_length (adapt_recipe(max_length=...)) on a GPU, or the texts' first part only")
    counts = np.bincount(train["label"].to_numpy(), minlength=len(label_names))
    if counts.min() < FEW_PER_CLASS:
        findings.append(f"only {counts.min()} training examples of '{label_names[int(counts.argmin())]}'")
        remedies.append(f"more labelled examples (at least {FEW_PER_CLASS} per class), or full mode if this is fast")
    ratio = counts.max() / max(counts.min(), 1)
    if ratio > IMBALANCE and cfg.class_weights is None:
        findings.append(f"the largest class is {ratio:.1f}x the smallest and the loss was not weighted")
        remedies.append("class weights (TrainConfig(class_weights=recipe.balanced_weights(...)))")
    if history:
        chance = math.log(len(label_names))
        losses = [row["train_loss"] for row in history]
        if losses[-1] > 0.9 * chance:
            findings.append(
                f"the training loss ended at {losses[-1]:.3f}, near chance (ln {len(label_names)} = {chance:.3f})"
            )
            remedies.append("more epochs, or a different learning rate (try 2e-5 and 2e-4 on the validation split)")
        if len(losses) > 1 and losses[-1] > losses[0]:
            findings.append(f"the training loss rose from {losses[0]:.3f} to {losses[-1]:.3f}: the run diverged")
            remedies.append("a lower learning rate (half of it) or more warm-up")
        accuracies = [row["val_accuracy"] for row in history]
        if len(accuracies) > 1 and int(np.argmax(accuracies)) == 0 and accuracies[-1] < accuracies[0]:
            findings.append("validation accuracy peaked after the first epoch and fell: overfitting")
            remedies.append("fewer epochs or more data")
    if cfg.train_size is not None and len(train) == cfg.train_size:  # fast mode capped the training rows
        findings.append(f"fast mode trained on {len(train):,} examples")
        remedies.append("full mode (COURSE_FAST=0) trains on the whole train split")
    if len(remedies) == 0:
        remedies.append("TF-IDF may simply suit this task (keywords decide it); keep the simpler model if so")
