"""The course's fine-tuning loop against transformers' Trainer on the same work, timed in one process.

Same data (chapter 00's training split), model (MiniLM), settings (max length 64, batch 32, lr 5e-5, linear warm-up
6%, weight decay 0.01, gradient clipping 1.0, length-grouped batches) and epochs. The course loop also validates after
each epoch, keeps the best checkpoint and saves its resume state; Trainer is timed without evaluation or checkpoints,
the most favourable setting for it. `python -m course_harness speed` prints the table; `bench` records it.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from course_utils import config, data, modeling

BENCH_NAME = "00 loop vs Trainer"  # its row in results/benchmark.md


@dataclass(frozen=True)
class SpeedResult:
    """Wall time and test accuracy of one training run."""

    name: str
    seconds: float
    test_accuracy: float


def _fresh_model(num_labels: int, seed: int):
    config.seed_everything(seed)
    return modeling.load_model(num_labels=num_labels)


def time_course_loop(splits: data.Splits, cfg: modeling.TrainConfig, workdir: Path) -> SpeedResult:
    """modeling.train with everything it does (validation, best checkpoint, resume state), timed."""
    tokenizer = modeling.load_tokenizer()
    model = _fresh_model(len(splits.label_names), cfg.seed)
    train = data.subsample(splits.train, cfg.train_size, seed=cfg.seed)
    start = time.perf_counter()
    modeling.train(model, tokenizer, train, splits.validation, cfg, workdir / "course", progress=False)
    seconds = time.perf_counter() - start
    accuracy = modeling.evaluate(model, tokenizer, splits.test, cfg.max_length).accuracy
    return SpeedResult("course loop (modeling.train)", seconds, accuracy)


def time_trainer(splits: data.Splits, cfg: modeling.TrainConfig, workdir: Path) -> SpeedResult:
    """transformers' Trainer on the same data and settings, without evaluation or checkpoints, timed."""
    tokenizer = modeling.load_tokenizer()
    model = _fresh_model(len(splits.label_names), cfg.seed)
    train = data.subsample(splits.train, cfg.train_size, seed=cfg.seed)
    encoded = Dataset.from_pandas(train[["text", "label"]].rename(columns={"label": "labels"}), preserve_index=False)
    encoded = encoded.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=cfg.max_length),
                          batched=True, remove_columns=["text"])
    encoded = encoded.map(lambda rows: {"length": [len(ids) for ids in rows["input_ids"]]}, batched=True)
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=1.0, lr_scheduler_type="linear", train_sampling_strategy="group_by_length", seed=cfg.seed,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=encoded, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = modeling.evaluate(model, tokenizer, splits.test, cfg.max_length).accuracy
    return SpeedResult("transformers Trainer", seconds, accuracy)


def compare(train_size: int | None = None, epochs: int = 1) -> pd.DataFrame:
    """Both runs on chapter 00's data and recipe; the ratio column is seconds over the Trainer's."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    config.setup(verbose=False)
    splits = data.course_splits()
    cfg = replace(modeling.default_config(fast=False), epochs=epochs, train_size=train_size)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [time_course_loop(splits, cfg, Path(tmp)), time_trainer(splits, cfg, Path(tmp))]
    table = pd.DataFrame([r.__dict__ for r in rows]).set_index("name")
    table["time / Trainer's"] = table["seconds"] / table.loc["transformers Trainer", "seconds"]
    return table.round({"seconds": 1, "test_accuracy": 3, "time / Trainer's": 2})


def speed_figures(table: pd.DataFrame) -> dict[str, float]:
    """The figures the benchmark records."""
    course, trainer = table.loc["course loop (modeling.train)"], table.loc["transformers Trainer"]
    return {"course_loop_s": float(course["seconds"]), "trainer_s": float(trainer["seconds"]),
            "ratio": float(np.round(course["seconds"] / trainer["seconds"], 2)),
            "course_test_accuracy": float(course["test_accuracy"]), "trainer_test_accuracy": float(trainer["test_accuracy"])}
