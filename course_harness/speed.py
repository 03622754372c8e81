"""The course's fine-tuning loop against transformers' Trainer on the same work, timed in one process.

Same data (chapter 00's training split), model (MiniLM), settings (max length 64, batch 32, lr 5e-5, linear warm-up
6%, weight decay 0.01, gradient clipping 1.0, length-grouped batches) and epochs. The course loop also validates after
each epoch, keeps the best checkpoint and saves its resume state. Both run on `config.device()` in the arithmetic
`config.precision()` picks (Trainer's `bf16`/`fp16` switches set to match). Trainer runs twice: doing the same
work (validation each epoch, the best checkpoint kept) and bare (no evaluation, no checkpoints), the most favourable
setting for it. `python -m course_harness speed` prints the table; `bench` records it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from course_utils import config, data, modeling

BENCH_NAME = "00 loop vs Trainer"  # its row in results/benchmark.md
COURSE = "course loop (modeling.train)"


@dataclass(frozen=True)
class SpeedResult:
    """Wall time and test accuracy of one training run."""

    name: str
    seconds: float
    test_accuracy: float


def _fresh_model(num_labels: int, seed: int):
    config.seed_everything(seed)
    return modeling.load_model(num_labels=num_labels).to(config.device())


def time_course_loop(splits: data.Splits, cfg: modeling.TrainConfig, workdir: Path) -> SpeedResult:
    """modeling.train with everything it does (validation, best checkpoint, resume state), timed."""
    tokenizer = modeling.load_tokenizer()
    model = _fresh_model(len(splits.label_names), cfg.seed)
    train = data.subsample(splits.train, cfg.train_size, seed=cfg.seed)
    start = time.perf_counter()
    modeling.train(model, tokenizer, train, splits.validation, cfg, workdir / "course", progress=False)
    seconds = time.perf_counter() - start
    accuracy = modeling.evaluate(model, tokenizer, splits.test, cfg.max_length).accuracy
    return SpeedResult(COURSE, seconds, accuracy)


def _encode(frame, tokenizer, max_length: int) -> Dataset:
    """A tokenized datasets.Dataset with labels and token lengths, as Trainer expects."""
    encoded = Dataset.from_pandas(frame[["text", "label"]].rename(columns={"label": "labels"}), preserve_index=False)
    encoded = encoded.map(
        lambda rows: tokenizer(rows["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    return encoded.map(lambda rows: {"length": [len(ids) for ids in rows["input_ids"]]}, batched=True)


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def time_trainer(splits: data.Splits, cfg: modeling.TrainConfig, workdir: Path, same_work: bool) -> SpeedResult:
    """transformers' Trainer on the same data and settings, timed; same_work adds validation each epoch and keeps
    the best checkpoint, as the course loop does."""
    tokenizer = modeling.load_tokenizer()
    model = _fresh_model(len(splits.label_names), cfg.seed)
    train = data.subsample(splits.train, cfg.train_size, seed=cfg.seed)
    extra = (
        dict(
            eval_strategy="epoch", save_strategy="best", metric_for_best_model="accuracy", per_device_eval_batch_size=64
        )
        if same_work
        else dict(eval_strategy="no", save_strategy="no")
    )
    args = TrainingArguments(
        output_dir=str(workdir / f"trainer-{same_work}"),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length",
        seed=cfg.seed,
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=config.device().type == "cpu",
        dataloader_num_workers=0,
        bf16=config.precision() == "bf16",
        fp16=config.precision() == "fp16",
        **extra,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_encode(train, tokenizer, cfg.max_length),
        eval_dataset=_encode(splits.validation, tokenizer, cfg.max_length) if same_work else None,
        compute_metrics=_accuracy if same_work else None,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = modeling.evaluate(model, tokenizer, splits.test, cfg.max_length).accuracy
    name = "Trainer, same work (validation, best checkpoint)" if same_work else "Trainer, bare"
    return SpeedResult(name, seconds, accuracy)


def compare(train_size: int | None = None, epochs: int = 1, eval_size: int | None = None) -> pd.DataFrame:
    """Both runs on chapter 00's data and recipe; the ratio column is seconds over the Trainer's. `eval_size`
    shrinks the validation and test splits (a quick check; the recorded comparison uses them whole)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if eval_size is not None and eval_size < 1:
        raise ValueError(f"eval_size must be >= 1 or None (the whole splits), got {eval_size}")
    config.setup(verbose=False)
    splits = data.course_splits()
    if eval_size is not None:
        splits = replace(
            splits,
            validation=data.subsample(splits.validation, eval_size, seed=0),
            test=data.subsample(splits.test, eval_size, seed=0),
        )
    cfg = replace(modeling.default_config(fast=False), epochs=epochs, train_size=train_size, lr=5e-5)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            time_course_loop(splits, cfg, Path(tmp)),
            time_trainer(splits, cfg, Path(tmp), same_work=True),
            time_trainer(splits, cfg, Path(tmp), same_work=False),
        ]
    table = pd.DataFrame([r.__dict__ for r in rows]).set_index("name")
    table["time / course loop's"] = table["seconds"] / table.loc[COURSE, "seconds"]
    return table.round({"seconds": 1, "test_accuracy": 3, "time / course loop's": 2})


def speed_figures(table: pd.DataFrame) -> dict[str, float]:
    """The figures the benchmark records: seconds, the course loop's time over each Trainer's, test accuracies."""
    course = table.loc[COURSE]
    same, bare = table.loc["Trainer, same work (validation, best checkpoint)"], table.loc["Trainer, bare"]
    return {
        "course_loop_s": float(course["seconds"]),
        "trainer_same_work_s": float(same["seconds"]),
        "trainer_bare_s": float(bare["seconds"]),
        "ratio_vs_same_work": float(np.round(course["seconds"] / same["seconds"], 2)),
        "ratio_vs_bare": float(np.round(course["seconds"] / bare["seconds"], 2)),
        "course_test_accuracy": float(course["test_accuracy"]),
        "trainer_test_accuracy": float(same["test_accuracy"]),
    }
