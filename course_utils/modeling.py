"""Model utilities: load MiniLM offline, fine-tune with resumable safetensors checkpoints, predict (chapter 00).

A run folder holds `best/` (the best epoch by validation accuracy, `save_pretrained` as safetensors),
`state/` (weights, optimizer and RNG state for resuming, also safetensors + JSON: nothing is pickled),
`history.json` and, once training finished, `done.json`. Every folder and file is written beside its
target and renamed into place, so an interruption never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from . import assets, config, store
from .data import Splits, course_splits, subsample
from .evaluation import EvalResult, classification_metrics, predictions_from_logits

CURVE_EVERY = 10  # steps per point of the training-loss curve
LOOP_VERSION = 3  # part of the checkpoint key: bump it when the loop's arithmetic changes (2: token-length groups,
# fused AdamW; 3: devices and mixed precision)


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning hyper-parameters; together with the data they key the cached checkpoint."""

    max_length: int = 64
    batch_size: int = 32
    lr: float = 5e-5
    epochs: int = 2
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 123
    train_size: int | None = None
    save_every: int = 100  # optimizer steps between resume saves (about a minute of training on 2 CPU cores)
    # per-class loss weights (None: plain cross-entropy); set for imbalanced own data by recipe.adapt_recipe
    class_weights: tuple[float, ...] | None = field(default=None, metadata={store.OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        checks = {
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "save_every": self.save_every,
        }
        for name, value in checks.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"TrainConfig.lr must be in (0, 1), got {self.lr}; try 5e-5")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.train_size is not None and self.train_size <= 0:
            raise ValueError(f"TrainConfig.train_size must be positive or None, got {self.train_size}")
        if self.class_weights is not None:
            weights = tuple(self.class_weights)
            if len(weights) < 2 or not all(isinstance(w, (int, float)) and 0 < w < float("inf") for w in weights):
                raise ValueError(
                    f"TrainConfig.class_weights must be one positive number per class, got {self.class_weights!r}"
                )
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights))


def model_source() -> str:
    """Where the pretrained model comes from: the offline asset folder, or the hub id online."""
    if config.mode() == "online":
        return assets.ONLINE_MODEL_ID
    return str(assets.model_dir())


OFFLINE_MODELS: dict[str, Callable[[], Path]] = {"minilm": assets.model_dir}


def resolve_model(source: str | Path | None = None) -> str:
    """A model folder or hub id: None is the course model, 'minilm' its offline copy, a folder itself.

    Offline, anything else is refused with the valid names rather than left to wait on the hub.
    """
    if source is None:
        return model_source()
    if str(source) in OFFLINE_MODELS:
        return str(OFFLINE_MODELS[str(source)]())
    if Path(source).is_dir() or config.mode() == "online":
        return str(source)
    raise ValueError(
        f"model {str(source)!r} is not available offline; use one of {sorted(OFFLINE_MODELS)} or a "
        "local folder, or set COURSE_MODE=online to load hub ids"
    )


def load_tokenizer(source: str | Path | None = None):
    """The MiniLM tokenizer (loaded with from_pretrained: transformers 5 ignores a bare vocab_file)."""
    config.apply_mode()
    return AutoTokenizer.from_pretrained(resolve_model(source))


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and its per-file progress bars (the notebook explains the new head)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(num_labels: int = 2, source: str | Path | None = None, **kwargs):
    """A sequence classifier on the pretrained encoder (a fresh head unless `source` is fine-tuned)."""
    if num_labels < 2:
        raise ValueError(f"num_labels must be >= 2, got {num_labels}; a classifier needs two classes")
    config.apply_mode()
    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_model(source), num_labels=num_labels, **kwargs
        )


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights are on (its inputs must go there too)."""
    return next(model.parameters()).device


def inference_batch(where: torch.device) -> int:
    """Sentences per prediction batch: 64 on a CPU, 512 on a GPU (only speed depends on it)."""
    return 64 if where.type == "cpu" else 512


def batches(
    frame: pd.DataFrame,
    tokenizer,
    batch_size: int,
    max_length: int,
    order: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[dict]:
    """Tokenised batches padded to their longest sentence, on `device`: input_ids (B, T), attention_mask,
    labels (B,)."""
    order = np.arange(len(frame)) if order is None else order
    texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        enc["labels"] = torch.as_tensor(labels[idx], dtype=torch.long)
        yield {name: tensor.to(device) for name, tensor in enc.items()}


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's example order, reproducible from (seed, epoch) so a run can resume mid-epoch.

    Length-grouped shuffling (as Hugging Face's `group_by_length`): shuffle, sort by length inside chunks of
    50 batches, cut into batches, shuffle the batches. Similar lengths share a batch, so padding, and time
    per step, roughly halve while every batch is still random. Pass token counts (`train_lengths`): sorting by
    characters leaves about a fifth more tokens to compute.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    mega = batch_size * 50
    chunks = [c[np.argsort(-lengths[c], kind="stable")] for c in np.split(order, range(mega, len(order), mega))]
    flat = np.concatenate(chunks)
    full = len(flat) // batch_size
    shuffled = flat[: full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([shuffled.ravel(), flat[full * batch_size :]])  # a short last batch stays last


@torch.no_grad()
def predict_proba(
    model, tokenizer, texts: list[str], batch_size: int | None = None, max_length: int = 64
) -> np.ndarray:
    """Class probabilities (N, C) for raw strings, in fp32 on the model's device; batches sorted by length."""
    if isinstance(texts, str):
        raise ValueError("predict_proba takes a list of strings, got one string; wrap it: [text]")
    where = model_device(model)
    batch_size = batch_size or inference_batch(where)
    was_training = model.training
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        logits = model(**enc.to(where)).logits  # (B, C)
        out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    model.train(was_training)
    return out


def predict(model, tokenizer, texts: list[str], label_names: list[str] | None = None) -> list:
    """Predicted labels for raw strings (names when label_names is given)."""
    preds = predictions_from_logits(torch.as_tensor(predict_proba(model, tokenizer, texts))).tolist()
    return [label_names[p] for p in preds] if label_names else preds


def example_losses(model, tokenizer, frame: pd.DataFrame, max_length: int = 64) -> np.ndarray:
    """Cross-entropy of each labelled sentence (N,): the membership-inference signal for a whole model."""
    probs = predict_proba(model, tokenizer, frame["text"].tolist(), max_length=max_length)
    return -np.log(np.clip(probs[np.arange(len(frame)), frame["label"].to_numpy()], 1e-12, None))


def evaluate(model, tokenizer, frame: pd.DataFrame, max_length: int = 64, batch_size: int | None = None) -> EvalResult:
    """Accuracy, macro F1, confusion matrix and probabilities on a labelled frame."""
    probs = predict_proba(model, tokenizer, frame["text"].tolist(), batch_size, max_length)
    return classification_metrics(frame["label"].to_numpy(), probs)


@dataclass
class Progress:
    """Where a fine-tuning run stands: saved with the resume state, so an interrupted run picks up here."""

    step: int = 0  # optimizer steps done
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    curve: list[list[float]] = field(default_factory=list)  # [step, mean loss of the last CURVE_EVERY steps]
    best_accuracy: float = -1.0  # best validation accuracy so far (best/ holds it)
    elapsed: float = 0.0  # training seconds before this session
    loss_sum: float = 0.0  # summed loss of the current epoch
    recent: list[float] = field(default_factory=list)  # losses since the last curve point


def train_lengths(tokenizer, frame: pd.DataFrame, max_length: int) -> np.ndarray:
    """Tokens per training sentence as the model sees them (truncated at max_length): what batches group by."""
    return np.minimum(np.array(token_lengths(tokenizer, frame["text"].tolist())), max_length)


def grad_scaler(where: torch.device, arithmetic: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its small range underflows gradients); a no-op for bf16 and fp32."""
    return torch.amp.GradScaler(where.type, enabled=arithmetic == "fp16")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, fused into one kernel where the device supports it (CPU and CUDA:
    about twice as fast per step on two CPU cores as the default per-tensor loop, same update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def loss_function(cfg: TrainConfig, model, where: torch.device) -> Callable[[dict], torch.Tensor]:
    """The training loss of one batch: the model's own cross-entropy, or a class-weighted one when
    `cfg.class_weights` is set (each example's loss times its class's weight, normalised by the weights' sum)."""
    if cfg.class_weights is None:
        return lambda batch: model(**batch).loss
    if len(cfg.class_weights) != model.config.num_labels:
        raise ValueError(
            f"TrainConfig.class_weights has {len(cfg.class_weights)} weights but the model has "
            f"{model.config.num_labels} classes; give one weight per class"
        )
    weight = torch.tensor(cfg.class_weights, dtype=torch.float32, device=where)

    def weighted(batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        return torch.nn.functional.cross_entropy(logits, batch["labels"], weight=weight)

    return weighted


def _save_state(run_dir: Path, model, optimizer, progress: Progress) -> None:
    """Save everything needed to resume: weights, AdamW moments, RNG state, counters (no pickle)."""

    def write(folder: Path) -> None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
        )
        opt = optimizer.state_dict()
        tensors = {f"{i}.{k}": v.detach().cpu() for i, s in opt["state"].items() for k, v in s.items()}
        tensors["rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["cuda_rng"] = torch.cuda.get_rng_state()
        save_file(tensors, folder / "optimizer.safetensors")
        groups = [dict(g) for g in opt["param_groups"]]
        (folder / "state.json").write_text(json.dumps({"progress": asdict(progress), "param_groups": groups}))

    store.write_dir(run_dir / "state", write)


def _load_state(run_dir: Path, model, optimizer) -> Progress:
    """Restore what _save_state wrote and return the progress counters."""
    folder = run_dir / "state"
    model.load_state_dict(load_file(folder / "model.safetensors"))
    tensors = load_file(folder / "optimizer.safetensors", device=str(model_device(model)))
    torch.set_rng_state(tensors.pop("rng").cpu())
    cuda_rng = tensors.pop("cuda_rng", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng.cpu())
    meta = json.loads((folder / "state.json").read_text())
    state: dict = {}
    for name, value in tensors.items():
        index, part = name.split(".", 1)
        state.setdefault(int(index), {})[part] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return Progress(**meta["progress"])


def _make_scheduler(optimizer, cfg: TrainConfig, total_steps: int, done_steps: int):
    """Linear warm-up then linear decay (the BERT recipe), positioned after `done_steps` steps."""
    warmup = int(cfg.warmup_ratio * total_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, total_steps, last_epoch=done_steps - 1)


def train(
    model,
    tokenizer,
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    cfg: TrainConfig,
    run_dir: Path,
    progress: bool = True,
    stop_after: int | None = None,
    precision: str | None = None,
) -> list[dict]:
    """Fine-tune with a progress bar, validate each epoch, keep the best checkpoint, resume if interrupted.

    The model trains where its weights are (`finetune` puts them on `config.device()`), with the forward pass
    under `precision` (default `config.precision()`: bf16 or fp16 autocast where that is faster, else fp32;
    fp16 adds a gradient scaler). `stop_after` ends the run after that many optimizer steps (as a disconnect
    would), for the tests. Returns the history: one dict per epoch with train loss, validation accuracy/F1 and
    seconds.
    """
    run_dir = Path(run_dir)
    where = model_device(model)
    arithmetic = precision or config.precision(where)
    scaler = grad_scaler(where, arithmetic)
    lengths = train_lengths(tokenizer, train_frame, cfg.max_length)
    loss_of = loss_function(cfg, model, where)
    steps_per_epoch = -(-len(train_frame) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    torch.manual_seed(cfg.seed)
    done = Progress()
    if (run_dir / "state" / "state.json").exists():
        done = _load_state(run_dir, model, optimizer)
    scheduler = _make_scheduler(optimizer, cfg, total_steps, done.step)
    model.train()
    start_time = time.perf_counter() - done.elapsed
    bar = tqdm(total=total_steps, initial=done.step, disable=not progress, desc="fine-tuning", unit="step")
    while done.step < total_steps:
        epoch, in_epoch = divmod(done.step, steps_per_epoch)
        order = epoch_order(lengths, cfg.batch_size, cfg.seed, epoch)[in_epoch * cfg.batch_size :]
        for batch in batches(train_frame, tokenizer, cfg.batch_size, cfg.max_length, order, where):
            with config.autocast(where, arithmetic):
                loss = loss_of(batch)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad()
            done.step += 1
            loss_value = loss.item()
            done.loss_sum += loss_value
            done.recent.append(loss_value)
            if len(done.recent) == CURVE_EVERY:
                done.curve.append([done.step, sum(done.recent) / CURVE_EVERY])
                done.recent = []
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}")
            end_of_epoch = done.step % steps_per_epoch == 0
            if end_of_epoch:
                _end_epoch(model, tokenizer, val_frame, cfg, run_dir, done, epoch, steps_per_epoch, start_time)
            if end_of_epoch or done.step % cfg.save_every == 0 or done.step == stop_after:
                done.elapsed = time.perf_counter() - start_time
                _save_state(run_dir, model, optimizer, done)
            if done.step == stop_after:
                bar.close()
                return done.history
            if end_of_epoch:
                break
    bar.close()
    store.write_json(
        run_dir / "done.json",
        {
            "config": asdict(cfg),
            "history": done.history,
            "curve": done.curve,
            "device": where.type,
            "precision": arithmetic,
        },
    )
    return done.history


def _end_epoch(
    model, tokenizer, val_frame, cfg, run_dir: Path, done: Progress, epoch: int, steps_per_epoch: int, start_time: float
) -> None:
    """Validate, log the epoch in the history, and keep the best weights."""
    result = evaluate(model, tokenizer, val_frame, cfg.max_length)
    model.train()
    row = {
        "epoch": epoch + 1,
        "step": done.step,
        "train_loss": done.loss_sum / steps_per_epoch,
        "val_accuracy": result.accuracy,
        "val_f1": result.f1,
        "seconds": round(time.perf_counter() - start_time, 1),
    }
    done.loss_sum = 0.0
    done.history.append(row)
    store.write_json(run_dir / "history.json", done.history)
    score = result.f1 if cfg.class_weights else result.accuracy  # weighted classes: accuracy rewards the majority
    if score > done.best_accuracy:
        done.best_accuracy = score

        def write(folder: Path) -> None:
            with quiet_transformers():
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)

        store.write_dir(run_dir / "best", write)


@dataclass
class FineTuned:
    """A fine-tuned model with its tokenizer, training history and where it is cached."""

    model: torch.nn.Module
    tokenizer: object
    history: list[dict]
    curve: list[list[float]]
    run_dir: Path
    trained_now: bool
    config: TrainConfig
    precision: str = "fp32"  # the arithmetic it was trained in


def pretrained_identity() -> str:
    """What identifies the pretrained weights in cache keys: the hub id online, the safetensors sha256 offline."""
    return assets.ONLINE_MODEL_ID if config.mode() == "online" else assets.MODEL_SAFETENSORS_SHA256


def encoder_identity(encoder: torch.nn.Module | None = None) -> str:
    """What identifies an encoder in cache keys: the pretrained weights' identity for None (the course's
    pretrained encoder), else the hash of the module's weights, so a compressed or retrained encoder differs."""
    return pretrained_identity() if encoder is None else store.key(encoder)


def checkpoint_key(
    cfg: TrainConfig, splits: Splits, where: torch.device | None = None, precision: str | None = None
) -> str:
    """Cache key: the training configuration, the data and its label names, the pretrained weights, and the
    device class and arithmetic (a GPU's random numbers and bf16 rounding give a slightly different model)."""
    where = where or config.device()
    arithmetic = precision or config.precision(where)
    return store.key(
        "checkpoint",
        LOOP_VERSION,
        cfg,
        splits.fingerprint(),
        splits.label_names,
        pretrained_identity(),
        where.type,
        arithmetic,
    )


def finetune(
    splits: Splits,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    retrain: bool | None = None,
    precision: str | None = None,
) -> FineTuned:
    """Fine-tune on the splits, or load the cached checkpoint with the same configuration, data, device class and
    arithmetic (`precision`: None for `config.precision()`, or 'fp32', 'bf16', 'fp16')."""
    cfg = cfg or TrainConfig()
    where = config.device()
    arithmetic = precision or config.precision(where)
    if arithmetic not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16 (or None for the course's choice), got {precision!r}")
    run_dir = store.path("checkpoints", checkpoint_key(cfg, splits, where, arithmetic))
    retrain = config.retrain_requested() if retrain is None else retrain
    if retrain:
        store.remove(run_dir)
    trained_now = not (run_dir / "done.json").exists()
    if trained_now:
        config.seed_everything(cfg.seed)
        tokenizer = load_tokenizer()
        model = load_model(num_labels=len(splits.label_names)).to(where)
        train_frame = subsample(splits.train, cfg.train_size, seed=cfg.seed)
        train(model, tokenizer, train_frame, splits.validation, cfg, run_dir, progress, precision=arithmetic)
        store.remove(run_dir / "state")
    done = json.loads((run_dir / "done.json").read_text())
    model = load_model(num_labels=len(splits.label_names), source=run_dir / "best").to(where)
    model.eval()
    return FineTuned(
        model,
        load_tokenizer(run_dir / "best"),
        done["history"],
        done.get("curve", []),
        run_dir,
        trained_now,
        cfg,
        done.get("precision", "fp32"),
    )


def default_config(fast: bool | None = None) -> TrainConfig:
    """The chapter-00 recipe (MiniLM, max length 64, batch 32); later chapters reuse its checkpoint.

    Full mode trains 3 epochs at lr 1e-4 on the whole train split, chosen on the validation split over two seeds
    (`python -m course_harness.recipe_search`); fast mode 2 epochs at lr 5e-5 on 800 sentences.
    """
    fast = config.is_fast() if fast is None else fast
    return TrainConfig(epochs=2, train_size=800) if fast else TrainConfig(epochs=3, lr=1e-4)


def course_model(fast: bool | None = None, progress: bool = True, splits: Splits | None = None) -> FineTuned:
    """The course's fine-tuned classifier on `splits` (default: `course_splits()`), with chapter 00's recipe for
    them: cached after chapter 00, trained here if missing.

    Later chapters load it; COURSE_RETRAIN=1 rebuilds their own runs but never this shared checkpoint (chapter
    00 rebuilds it through `finetune`).
    """
    from .recipe import course_recipe  # recipe builds on this module

    splits = splits or course_splits()
    return finetune(splits, course_recipe(splits, fast), progress=progress, retrain=False)


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text including [CLS] and [SEP], without truncation."""
    return [len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]
