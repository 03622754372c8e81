"""Training the small models of chapter 04: recovery after pruning, knowledge distillation into fewer layers, and
parameter-efficient fine-tuning with peft (LoRA, AdaLoRA, prompt tuning, IA3).

Every trained variant is cached by `store` under a key of everything that changes it (the starting weights, the
data, the recipe, the device class and arithmetic), as safetensors plus a JSON of its shape, so a rerun loads it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from peft import AdaLoraConfig, IA3Config, LoraConfig, PromptTuningConfig, TaskType, get_peft_model
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import compression, config, modeling, store
from .evaluation import class_count

PEFT_METHODS = ("lora", "adalora", "prompt", "ia3")
LOOP_VERSION = 1  # part of every cache key here: bump it when the training loop's arithmetic changes


@dataclass(frozen=True)
class Recipe:
    """How a compressed model trains: epochs, learning rate, batch, and for distillation its temperature and the
    weight of the soft (teacher) loss against the hard (label) loss."""

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    seed: int = 123
    warmup_ratio: float = 0.06
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation loss; 0 trains on labels alone

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Recipe.{name} must be a positive integer, got {value!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"Recipe.lr must be in (0, 1), got {self.lr}; try 5e-5 for full models, 1e-3 for adapters")
        if self.temperature <= 0:
            raise ValueError(f"Recipe.temperature must be > 0, got {self.temperature}; 1 is no softening, 2-4 is usual")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"Recipe.alpha must be in [0, 1], got {self.alpha}; 0 is labels only, 1 teacher only")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy on labels (Hinton et al. 2015).

    Logits are (B, C); labels (B,) with -1 for sentences that have no label (they add only the soft term). The T^2
    keeps the soft term's gradients the same size as T changes.
    """
    soft = (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )
    labelled = labels >= 0
    hard = F.cross_entropy(student_logits[labelled], labels[labelled]) if labelled.any() else student_logits.sum() * 0
    return alpha * soft + (1 - alpha) * hard


def train_loop(
    model: torch.nn.Module,
    tokenizer,
    frame: pd.DataFrame,
    recipe: Recipe,
    soft: np.ndarray | None = None,
    after_step: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """Fine-tune `model` on `frame` (labels, -1 for unlabelled rows) with AdamW and a linear schedule; with `soft`
    teacher logits (N, C) the loss is `distillation_loss`, else cross-entropy. Returns the loss of every step."""
    where = modeling.model_device(model)
    arithmetic = config.precision(where)
    lengths = modeling.train_lengths(tokenizer, frame, recipe.max_length)
    steps = -(-len(frame) // recipe.batch_size) * recipe.epochs
    optimizer = modeling.make_optimizer(model, recipe.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * steps), steps)
    teacher = torch.as_tensor(soft, dtype=torch.float32) if soft is not None else None
    torch.manual_seed(recipe.seed)
    model.train()
    losses, step = [], 0
    with tqdm(total=steps, disable=not progress, desc=desc, unit="step") as bar:
        for epoch in range(recipe.epochs):
            order = modeling.epoch_order(lengths, recipe.batch_size, recipe.seed, epoch)
            chunks = [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
            for idx, batch in zip(
                chunks,
                modeling.batches(frame, tokenizer, recipe.batch_size, recipe.max_length, order, where),
                strict=True,
            ):
                labels = batch.pop("labels")
                with config.autocast(where, arithmetic):
                    logits = model(**batch).logits.float()  # (B, C)
                if teacher is None:
                    loss = F.cross_entropy(logits, labels)
                else:
                    loss = distillation_loss(logits, teacher[idx].to(where), labels, recipe.temperature, recipe.alpha)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                scheduler.step()
                if after_step is not None:
                    after_step(step)
                optimizer.zero_grad()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ---------------------------------------------------------------- students


def student_from_teacher(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of the teacher that keeps only the listed blocks (DistilBERT's initialisation: e.g. [0, 2, 4])."""
    total = len(compression.blocks(teacher))
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < total for i in layers):
        raise ValueError(f"layers must be distinct block ids in [0, {total}), got {layers}")
    if len(layers) >= total:
        raise ValueError(
            f"a student must be smaller than its teacher: {len(layers)} of {total} blocks; keep fewer blocks"
        )
    student = copy.deepcopy(teacher)
    encoder = getattr(student, "bert", student).encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in sorted(layers)])
    student.config.num_hidden_layers = len(layers)
    return student


def teacher_logits(teacher: torch.nn.Module, tokenizer, texts: list[str], max_length: int = 64) -> np.ndarray:
    """The teacher's logits (N, C) for every text (what the student is taught to match)."""
    return compression.predict_logits(compression.TorchRunner(teacher), tokenizer, texts, max_length)


# ---------------------------------------------------------------- peft


def peft_config(method: str, rank: int = 8, total_steps: int = 1000):
    """The peft configuration of one method, all on the query/value projections where that applies."""
    if method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, target_modules=["query", "value"])
    if method == "adalora":
        return AdaLoraConfig(
            task_type=TaskType.SEQ_CLS,
            init_r=int(rank * 1.5),
            target_r=rank,
            target_modules=["query", "value"],
            total_step=total_steps,
            tinit=total_steps // 10,
            tfinal=total_steps // 5,
            deltaT=10,
        )
    if method == "prompt":
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=20)
    if method == "ia3":
        return IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=["key", "value", "output.dense"],
            feedforward_modules=["output.dense"],
        )
    raise ValueError(f"unknown peft method {method!r}; use one of {PEFT_METHODS}")


# ---------------------------------------------------------------- cached training runs


@dataclass
class Trained:
    """A trained compressed model with its losses, training seconds and trainable-parameter count."""

    model: torch.nn.Module
    losses: list[float]
    seconds: float
    trainable: int
    trained_now: bool


def cached_run(
    kind: str,
    key: str,
    build: Callable[[], torch.nn.Module],
    train: Callable[[torch.nn.Module], list[float]],
    retrain: bool | None,
) -> Trained:
    """Load a cached run (weights + losses) into `build()`'s model, or train it and cache it atomically; `retrain`
    (None: COURSE_RETRAIN) removes the cached run first."""
    folder = store.path(kind, key)
    if config.retrain_requested() if retrain is None else retrain:
        store.remove(folder)
    model = build()
    trainable = modeling.count_parameters(model, trainable_only=True)
    if (folder / "run.json").exists():
        load_model(model, folder / "model.safetensors")  # strict; tied tensors (prompt tuning's embeddings) once
        meta = json.loads((folder / "run.json").read_text())
        model.eval()
        return Trained(model, meta["losses"], meta["seconds"], trainable, False)
    start = time.perf_counter()
    losses = train(model)
    seconds = time.perf_counter() - start

    def write(tmp: Path) -> None:
        save_model(model, tmp / "model.safetensors")
        (tmp / "run.json").write_text(json.dumps({"losses": losses, "seconds": seconds}))

    store.write_dir(folder, write)
    return Trained(model, losses, seconds, trainable, True)


def run_key(*parts: object) -> str:
    """The cache key of a training run: the parts plus this loop's version, the device class and arithmetic."""
    where = config.device()
    return store.key(LOOP_VERSION, *parts, where.type, config.precision(where))


def recover(
    model: torch.nn.Module,
    sparsity: float,
    tokenizer,
    frame: pd.DataFrame,
    recipe: Recipe,
    progress: bool = True,
    retrain: bool | None = None,
) -> Trained:
    """Short fine-tuning after pruning: `model` is magnitude-pruned to `sparsity` (0 for a model already pruned
    structurally) and trained with its masks attached, so the zeros stay zero; the result has the masks folded in."""
    compression.check_sparsity(sparsity)
    key = run_key("recover", model, sparsity, frame, recipe)

    def train(pruned):
        return train_loop(pruned.to(config.device()), tokenizer, frame, recipe, progress=progress, desc="recovery")

    trained = cached_run("recovered", key, lambda: compression.magnitude_prune(model, sparsity), train, retrain)
    compression.make_pruning_permanent(trained.model)
    return trained


def distill(
    student: torch.nn.Module,
    tokenizer,
    frame: pd.DataFrame,
    recipe: Recipe,
    soft: np.ndarray | None,
    progress: bool = True,
    retrain: bool | None = None,
) -> Trained:
    """Train a student on `frame` with the teacher's logits `soft` (or, with soft=None or alpha=0, on labels)."""
    soft = None if recipe.alpha == 0 else soft
    if soft is not None and len(soft) != len(frame):
        raise ValueError(f"soft has {len(soft)} rows for {len(frame)} sentences; compute teacher_logits on this frame")
    if soft is None and (frame["label"] < 0).any():
        raise ValueError("unlabelled rows (label -1) need the teacher's logits: pass soft= and alpha > 0")
    key = run_key("distill", student, frame, recipe, soft if soft is not None else "labels only")

    def train(model):
        return train_loop(
            model.to(config.device()), tokenizer, frame, recipe, soft, progress=progress, desc="distillation"
        )

    return cached_run("students", key, lambda: copy.deepcopy(student), train, retrain)


def peft_finetune(
    method: str,
    tokenizer,
    frame: pd.DataFrame,
    recipe: Recipe,
    rank: int = 8,
    progress: bool = True,
    retrain: bool | None = None,
) -> Trained:
    """Fine-tune the pretrained model with one peft method (the backbone frozen, the classifier head trained); the
    head has one output per label in `frame` (labels 0..C-1, as `data.Splits` gives them)."""
    steps = -(-len(frame) // recipe.batch_size) * recipe.epochs
    peft_config(method, rank, steps)  # validates the method name before any work
    key = run_key("peft", method, rank, frame, recipe, modeling.pretrained_identity())

    def build():
        torch.manual_seed(recipe.seed)
        model = modeling.load_model(num_labels=class_count(frame["label"]))
        return get_peft_model(model, peft_config(method, rank, steps))

    def train(model):
        hook = None
        if method == "adalora":

            def hook(step):  # noqa: E306  AdaLoRA re-allocates ranks from its importance scores as it trains
                model.base_model.update_and_allocate(step)

        return train_loop(
            model.to(config.device()), tokenizer, frame, recipe, after_step=hook, progress=progress, desc=method
        )

    return cached_run("peft", key, build, train, retrain)


def recipe_summary(recipe: Recipe) -> dict:
    """A recipe as a plain dict (for tables and report.record)."""
    return asdict(recipe)
