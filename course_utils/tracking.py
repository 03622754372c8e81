"""Experiment tracking and the model card (chapter 07): a local run log and a Hugging Face model card.

The run log is one JSON line per run in `<results>/runs.jsonl`, written by `report.record` at the end of every
notebook. The course keeps its own file instead of MLflow (a tracking server and a database stack an offline
course does not need) or Weights & Biases (a hosted service, which an offline course cannot reach). Each line is
appended whole, under an exclusive lock and flushed to disk, so a crash or two notebooks finishing at once never
leave half a line; `load_runs` skips (and counts) any corrupt line an older version or a hand edit left behind.

The model card uses `huggingface_hub`'s `ModelCard`/`ModelCardData`/`EvalResult` (YAML metadata the hub reads,
`model-index` evaluation results) with the course's own template below; nothing here touches the network.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import config, report, store

try:
    import fcntl
except ImportError:  # Windows has no flock: there the whole line still goes out in one write, unlocked
    fcntl = None

RUNS_FILE = "runs.jsonl"
RUN_COLUMNS = ["run_id", "chapter", "time", "mode", "device", "threads"]
PARAM_PREFIX = "param."
FIGURE_PREFIX = "figure."  # for a figure named like a run column (chapter 04 records 'threads')


# ---------------------------------------------------------------------------------------------------- run log


def runs_path(directory: Path | None = None) -> Path:
    """The run log: <results>/runs.jsonl (chapter 07)."""
    return (Path(directory) if directory is not None else config.results_dir()) / RUNS_FILE


def _check_chapter(chapter: str) -> str:
    """The chapter name, or the one-line error report.figure_path gives for a name that is not file-name safe."""
    if not isinstance(chapter, str) or not report.CHAPTER_RE.match(chapter):
        raise ValueError(
            f"chapter must be a file-name-safe name like '00_finetuning', got {chapter!r}; "
            "use letters, digits, '_', '-' and '.'"
        )
    return chapter


def _scalars(kind: str, values: Mapping[str, object] | None) -> dict:
    """name -> JSON scalar (report.as_scalar) of a run's figures or params (`kind`), or a one-line ValueError."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{kind}s must be a dict of name -> scalar, got {type(values).__name__}; pass e.g. {{'accuracy': 0.83}}"
        )
    clean = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{kind} names must be non-empty strings, got {key!r}; rename the key")
        clean[key] = report.as_scalar(key, value)
    return clean


def _append_line(path: Path, line: str) -> None:
    """Append one whole line under an exclusive lock, in one write, flushed to disk (chapter 07)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line.encode("utf-8")
    with open(path, "a+b", buffering=0) as handle:  # unbuffered append: each write is one system call
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
        size = handle.seek(0, 2)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                data = b"\n" + data  # an older crash left half a line: end it so this record stays whole
        while data:
            data = data[handle.write(data) :]  # one call unless the disk is full or a signal interrupts it
        handle.flush()
        os.fsync(handle.fileno())


def log_run(
    chapter: str,
    figures: Mapping[str, object],
    params: Mapping[str, object] | None = None,
    directory: Path | None = None,
) -> dict:
    """Append one run (figures, params, mode, device, threads, versions) to the run log and return it (chapter 07)."""
    run = {
        "run_id": uuid.uuid4().hex[:12],
        "chapter": _check_chapter(chapter),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    clean_params, clean_figures = _scalars("param", params), _scalars("figure", figures)
    run |= {"mode": "fast" if config.is_fast() else "full", "device": str(config.device())}
    run |= {"threads": config.thread_count(), "versions": dict(config.versions())}
    run |= {"params": clean_params, "figures": clean_figures}
    _append_line(runs_path(directory), json.dumps(run, allow_nan=False) + "\n")
    return run


def _parse(raw: bytes) -> dict | None:
    """One run from one line of the log, or None when the line is corrupt (half-written or edited by hand)."""
    try:
        run = json.loads(raw)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8 (log lines are ASCII)
        return None
    if not isinstance(run, dict) or any(column not in run for column in RUN_COLUMNS):
        return None
    if not isinstance(run.get("figures"), dict) or not isinstance(run.get("params", {}), dict):
        return None
    return run


def _figure_column(name: str) -> str:
    """The load_runs column of a figure: its name, prefixed when it is also a run column."""
    return FIGURE_PREFIX + name if name in RUN_COLUMNS else name


def _row(run: dict) -> dict:
    """One load_runs row: the run columns, then one column per figure, then one per param ('param.<name>')."""
    row = {column: run[column] for column in RUN_COLUMNS}
    row |= {_figure_column(name): value for name, value in run["figures"].items()}
    row |= {PARAM_PREFIX + name: value for name, value in run.get("params", {}).items()}
    return row


def load_runs(chapter: str | None = None, directory: Path | None = None) -> pd.DataFrame:
    """The logged runs, one row each (of one chapter when given); corrupt lines are skipped with one warning."""
    if chapter is not None:
        _check_chapter(chapter)
    path = runs_path(directory)
    if not path.exists():
        return pd.DataFrame(columns=RUN_COLUMNS)
    rows, skipped = [], 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        run = _parse(raw)
        if run is None:
            skipped += 1
        elif chapter is None or run["chapter"] == chapter:
            rows.append(_row(run))
    if skipped:
        warnings.warn(
            f"skipped {skipped} corrupt line(s) of {path} (half-written or edited by hand); "
            "delete those lines to silence this",
            stacklevel=2,
        )
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=RUN_COLUMNS)


def _figure_names(runs: pd.DataFrame) -> list[str]:
    """The figures logged in a load_runs table (run columns and params left out, prefixes removed)."""
    names = [c for c in runs.columns if c not in RUN_COLUMNS and not c.startswith(PARAM_PREFIX)]
    return [c.removeprefix(FIGURE_PREFIX) if c.removeprefix(FIGURE_PREFIX) in RUN_COLUMNS else c for c in names]


def _numeric(runs: pd.DataFrame, chapter: str, figures: list[str]) -> pd.DataFrame:
    """The chosen figures of `runs` as numbers, or a one-line error naming a missing or non-numeric figure."""
    if not isinstance(figures, list) or not figures or not all(isinstance(f, str) for f in figures):
        raise ValueError(f"figures must be a non-empty list of figure names, got {figures!r}; pass e.g. ['accuracy']")
    available = _figure_names(runs)
    for name in figures:
        if name not in available:
            raise ValueError(
                f"figure {name!r} was not logged for chapter {chapter!r}; available: {', '.join(available) or 'none'}"
            )
    numbers = {}
    for name in figures:
        column = runs[_figure_column(name)].map(lambda v: float(v) if isinstance(v, bool) else v)
        numbers[name] = pd.to_numeric(column, errors="coerce")
        if (numbers[name].isna() & column.notna()).any():
            raise ValueError(f"figure {name!r} of chapter {chapter!r} is not a number; compare numeric figures only")
    return pd.DataFrame(numbers, index=runs.index)


def compare_runs(chapter: str, figures: list[str], directory: Path | None = None) -> pd.DataFrame:
    """The chosen figures over a chapter's runs, then their mean and standard deviation per mode (chapter 07)."""
    runs = load_runs(chapter, directory)
    if runs.empty:
        raise ValueError(
            f"no runs of chapter {chapter!r} in {runs_path(directory)}; run the notebook (report.record logs a run)"
        )
    values = _numeric(runs, chapter, figures)
    table = pd.concat([runs[["run_id", "mode", "time"]].rename(columns={"run_id": "run"}), values], axis=1)
    summaries = []
    for mode in sorted(runs["mode"].unique()):
        chosen = values[runs["mode"] == mode]
        summaries.append({"run": "mean", "mode": mode, "time": None, **chosen.mean().to_dict()})
        summaries.append({"run": "std", "mode": mode, "time": None, **chosen.std(ddof=1).to_dict()})
    return pd.concat([table, pd.DataFrame(summaries)], ignore_index=True)


# ------------------------------------------------------------------------------------------------- model card

VARIANT_KEYS = ("variant", "accuracy", "size_mb", "latency_ms")
ACCOUNTANTS = {
    "rdp": "the Renyi-DP (RDP) accountant (course_utils.privacy, checked against Opacus)",
    "prv": "Opacus's PRV accountant (Gopi et al. 2021)",
}
NO_PRIVACY = (
    "Trained without differential privacy: no formal guarantee bounds what the weights reveal about a training "
    "sentence."
)
NO_ROBUSTNESS = "Not measured yet (chapter 06)."
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
USAGE = """Serve the model with the course's service (FastAPI on 127.0.0.1, an API key on every route but /health):

```bash
bash course serve
curl -s http://127.0.0.1:PORT/predict -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\
     -d '{"texts": ["A gripping, funny film."]}'
```

`POST /predict` answers with a label and the class probabilities for each text, and the model's version and sha256."""

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A {{ kind }} ({{ classes }}) trained in the Trustworthy LLM Engineering course. Every figure on
this card comes from the course's own runs.

## Model details

- **Base model:** {{ base }}
- **Weights sha256:** `{{ sha256 }}`
- **Files:** {{ files }}
- **License:** {{ license }}

## Intended use

{{ intended_use }}

## Training data

{{ dataset_text }}

## Evaluation

{{ metrics_table }}
{%- if variants_table %}

Variants of the same model:

{{ variants_table }}
{%- endif %}

## Privacy

{{ privacy }}

## Robustness

{{ robustness }}

## Limitations

{{ limitations }}

## How to use

{{ usage }}
"""


def _check_text(name: str, value: object) -> None:
    """A one-line error unless `value` is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}; fill it in")


def _check_fraction(name: str, value: object) -> None:
    """A one-line error unless `value` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}; pass a fraction, not a percentage")


def _check_count(name: str, value: object) -> None:
    """A one-line error unless `value` is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}; pass the number of sentences")


def _check_variant(row: object) -> None:
    """A one-line error unless `row` is a dict of variant, accuracy, size_mb and latency_ms (each optional)."""
    if not isinstance(row, dict) or set(row) - set(VARIANT_KEYS):
        raise ValueError(f"a variant row must be a dict with keys among {', '.join(VARIANT_KEYS)}, got {row!r}")
    if row.get("accuracy") is not None:
        _check_fraction(f"variant {row.get('variant')!r} accuracy", row["accuracy"])
    for key in ("size_mb", "latency_ms"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
            raise ValueError(f"variant {row.get('variant')!r} {key} must be a number >= 0, got {value!r}")


def _check_privacy(epsilon: object, delta: object, accountant: str) -> None:
    """A one-line error for an epsilon <= 0, or a finite epsilon without a delta in (0, 1) (inf: not private)."""
    if epsilon is None:
        return
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(
            f"privacy_epsilon must be > 0, got {epsilon!r}; pass the epsilon the accountant reported, "
            "or None for a model trained without differential privacy"
        )
    if math.isfinite(epsilon) and (not isinstance(delta, (int, float)) or not 0 < delta < 1):
        raise ValueError(f"privacy_delta must be in (0, 1) with a finite epsilon, got {delta!r}; pass the delta used")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")


SENTIMENT_CLASSES = ("negative", "positive")


@dataclass(frozen=True)
class CardFacts:
    """What the model card states (chapter 07); checked on construction, each error one line."""

    model_name: str
    base_model: str
    dataset: str
    train_size: int
    test_size: int
    metrics: dict[str, float]  # e.g. {"accuracy": 0.85, "f1_macro": 0.84}, fractions on the test split
    variants: list[dict]  # rows of variant, accuracy, size_mb, latency_ms (each optional)
    privacy_epsilon: float | None  # None (or inf): trained without differential privacy
    privacy_delta: float | None
    robustness: str | None  # None: "not measured yet (chapter 06)"
    intended_use: str
    limitations: list[str]
    sha256: str  # of the weights file, files[0]
    license: str = "mit"
    accountant: str = "rdp"  # the accountant that gave privacy_epsilon: "rdp" or "prv"
    files: tuple[str, ...] = ("model.safetensors",)
    classes: tuple[str, ...] = SENTIMENT_CLASSES  # the model's class names, in output order

    def __post_init__(self) -> None:
        for name in ("model_name", "base_model", "dataset", "intended_use", "license"):
            _check_text(name, getattr(self, name))
        _check_count("train_size", self.train_size)
        _check_count("test_size", self.test_size)
        if not isinstance(self.metrics, dict) or not self.metrics:
            raise ValueError(f"metrics must be a non-empty dict of name -> value, got {self.metrics!r}")
        for name, value in self.metrics.items():
            _check_text("metric name", name)
            _check_fraction(f"metric {name!r}", value)
        for row in self.variants:
            _check_variant(row)
        _check_privacy(self.privacy_epsilon, self.privacy_delta, self.accountant)
        if not isinstance(self.sha256, str) or not SHA256_RE.match(self.sha256):
            raise ValueError(
                f"sha256 must be 64 hex characters, got {self.sha256!r}; pass hashlib.sha256(weights).hexdigest()"
            )
        if not self.limitations or not all(isinstance(item, str) and item.strip() for item in self.limitations):
            raise ValueError(f"limitations must list at least one non-empty sentence, got {self.limitations!r}")
        if len(self.classes) < 2 or not all(isinstance(item, str) and item.strip() for item in self.classes):
            raise ValueError(f"classes must name at least two classes, got {self.classes!r}; pass the label names")
        if not self.files or not all(isinstance(item, str) and item for item in self.files):
            raise ValueError(f"files must name at least one file, got {self.files!r}; e.g. ('model.safetensors',)")


def privacy_text(facts: CardFacts) -> str:
    """The card's privacy paragraph: (epsilon, delta) and the accountant, or that there is no formal guarantee."""
    epsilon = facts.privacy_epsilon
    if epsilon is None or math.isinf(epsilon):
        return NO_PRIVACY
    return (
        f"Trained with differential privacy (DP-SGD): (epsilon = {epsilon:.2f}, delta = {facts.privacy_delta:g}) "
        f"for each training sentence, from {ACCOUNTANTS[facts.accountant]}. The guarantee covers the fine-tuning "
        "data only, not the base model's pre-training data."
    )


def _tables(facts: CardFacts) -> tuple[str, str]:
    """The metrics table and the variants table (empty when there are no variants), in markdown."""
    metrics = report.format_table(
        [{"metric": k, "value": float(v)} for k, v in facts.metrics.items()], ["metric", "value"]
    )
    columns = [key for key in VARIANT_KEYS if any(row.get(key) is not None for row in facts.variants)]
    variants = report.format_table(facts.variants, columns) if facts.variants and columns else ""
    return metrics, variants


def _card_data(facts: CardFacts) -> ModelCardData:
    """The card's YAML metadata, evaluation results as the hub's model-index."""
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=facts.dataset,
            dataset_name=facts.dataset,
            dataset_split="test",
            metric_type=name,
            metric_value=float(value),
        )
        for name, value in facts.metrics.items()
    ]
    return ModelCardData(
        language="en",
        license=facts.license,
        library_name="transformers",
        pipeline_tag="text-classification",
        base_model=facts.base_model,
        datasets=[facts.dataset],
        metrics=list(facts.metrics),
        model_name=facts.model_name,
        tags=["sentiment", "trustworthy-llm-course"] if is_sentiment(facts) else ["trustworthy-llm-course"],
        eval_results=results,
    )


def is_sentiment(facts: CardFacts) -> bool:
    """Whether the card is the course's sentiment model's (negative / positive) rather than a model of your labels."""
    return tuple(facts.classes) == SENTIMENT_CLASSES


def model_card(facts: CardFacts) -> ModelCard:
    """A Hugging Face model card of the course's model: YAML metadata and a markdown body (chapter 07)."""
    metrics_table, variants_table = _tables(facts)
    return ModelCard.from_template(
        _card_data(facts),
        template_str=CARD_TEMPLATE,
        title=facts.model_name,
        kind="sentiment classifier" if is_sentiment(facts) else "text classifier",
        classes=" / ".join(facts.classes),
        base=facts.base_model,
        sha256=facts.sha256.lower(),
        files=", ".join(f"`{name}`" for name in facts.files),
        intended_use=facts.intended_use,
        dataset_text=f"{facts.dataset}: {facts.train_size} training sentences, {facts.test_size} test sentences.",
        metrics_table=metrics_table,
        variants_table=variants_table,
        privacy=privacy_text(facts),
        robustness=facts.robustness or NO_ROBUSTNESS,
        limitations="\n".join(f"- {item}" for item in facts.limitations),
        usage=USAGE,
    )


def save_card(card: ModelCard, target: Path) -> Path:
    """Write a model card (README.md of a model folder) atomically (chapter 07)."""
    target = Path(target)
    store.write_text(target, str(card))
    return target
